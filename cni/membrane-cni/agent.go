// One request, one reply over the agent's unix socket (the protocol of agent/api_serving.py:
// a JSON line each way, then the agent closes the connection).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

const (
	defaultSocket   = "/run/membrane/agent.sock"
	requestTimeout  = 60 * time.Second
	connectAttempts = 5
	maxReply        = 16 << 20
)

// request is what the agent's "cni" op reads; config is the configuration as received.
type request struct {
	Op          string            `json:"op"`
	Command     string            `json:"command"`
	ContainerID string            `json:"containerID"`
	Netns       string            `json:"netns"`
	IfName      string            `json:"ifName"`
	Args        map[string]string `json:"args"`
	Path        string            `json:"path"`
	Config      json.RawMessage   `json:"config"`
}

// reply is the agent's answer; result is relayed byte for byte.
type reply struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    *int            `json:"code"`
		Msg     json.RawMessage `json:"msg"`
		Details json.RawMessage `json:"details"`
	} `json:"error"`
}

// dial connects, retrying briefly when the agent is restarting or its accept queue is full.
func dial(path string, deadline time.Time) (net.Conn, *cniError) {
	for attempt := 1; ; attempt++ {
		conn, err := net.DialTimeout("unix", path, time.Until(deadline))
		if err == nil {
			return conn, nil
		}
		retry := errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EAGAIN)
		if !retry || attempt == connectAttempts {
			return nil, fail(tryAgainLater, "membrane agent is not reachable", path+": "+reason(err))
		}
		time.Sleep(time.Duration(attempt) * 50 * time.Millisecond)
	}
}

// reason is the operating system's word for a failure ("No such file or directory").
func reason(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

func callAgent(path string, req *request) (json.RawMessage, *cniError) {
	deadline := time.Now().Add(requestTimeout)
	conn, cerr := dial(path, deadline)
	if cerr != nil {
		return nil, cerr
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	line, err := json.Marshal(req)
	if err != nil {
		return nil, fail(internalError, "membrane-cni internal error", err.Error())
	}
	var data []byte
	if _, err = conn.Write(append(line, '\n')); err == nil {
		data, err = io.ReadAll(io.LimitReader(conn, maxReply))
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fail(tryAgainLater, "membrane agent did not answer in time", path)
		}
		return nil, fail(ioFailure, "lost the connection to the membrane agent", reason(err))
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 { // closed before answering: the agent died mid-request
		return nil, fail(ioFailure, "lost the connection to the membrane agent", "closed before a reply")
	}
	var rep reply
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fail(ioFailure, "membrane agent sent an unreadable answer", err.Error())
	}
	if !rep.OK {
		return nil, agentError(&rep)
	}
	return rep.Result, nil
}

// agentError turns the agent's error object into the plugin's, keeping code, msg and details.
func agentError(rep *reply) *cniError {
	e := &cniError{Code: internalError, Msg: "agent error"}
	if rep.Error == nil {
		return e
	}
	if rep.Error.Code != nil {
		e.Code = *rep.Error.Code
	}
	e.Msg = text(rep.Error.Msg, e.Msg)
	e.Details = text(rep.Error.Details, "")
	return e
}

// text is a JSON string's value, or any other JSON value as written (details may be a list).
func text(raw json.RawMessage, fallback string) string {
	if len(raw) == 0 || string(raw) == "null" {
		return fallback
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}
