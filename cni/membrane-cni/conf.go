// The network configuration and environment checks the plugin makes before it calls the
// agent: only what the specification asks a plugin to refuse (unreadable JSON, an
// unsupported version, a missing variable). Everything about the pod is the agent's call.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

const latestVersion = "1.1.0"

// requiredEnv lists, per command, the CNI_* variables the specification makes mandatory.
var requiredEnv = map[string][]string{
	"ADD":    {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"},
	"DEL":    {"CNI_CONTAINERID", "CNI_IFNAME"},
	"CHECK":  {"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"},
	"STATUS": {},
	"GC":     {},
}

// netConf holds the fields the plugin itself reads; raw is the configuration as received,
// forwarded to the agent untouched.
type netConf struct {
	cniVersion  string
	agentSocket string
	raw         json.RawMessage
}

// parseConf applies the checks of membrane.cni_types.NetConf.parse (the agent repeats them).
func parseConf(data []byte) (*netConf, *cniError) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		if trimmed := bytes.TrimSpace(data); json.Valid(trimmed) && len(trimmed) > 0 && trimmed[0] != '{' {
			return nil, fail(decodeFailure, "network configuration must be a JSON object", "")
		}
		return nil, fail(decodeFailure, "network configuration is not valid JSON", err.Error())
	}
	if fields == nil { // the literal null
		return nil, fail(decodeFailure, "network configuration must be a JSON object", "")
	}
	conf := &netConf{raw: json.RawMessage(data)}
	version, ok := stringField(fields, "cniVersion")
	if !ok || version == "" {
		return nil, fail(invalidConfig, "network configuration: cniVersion is required", "")
	}
	if !supported(version) {
		return nil, fail(incompatibleVersion, fmt.Sprintf("cniVersion %s is not supported", version),
			"supported: "+strings.Join(supportedVersions, ", "))
	}
	conf.cniVersion = version
	for _, key := range []string{"name", "type"} {
		if v, ok := stringField(fields, key); !ok || v == "" {
			return nil, fail(invalidConfig, "network configuration: "+key+" is required", "")
		}
	}
	if raw, ok := fields["mtu"]; ok && string(raw) != "null" {
		// strconv refuses 1500.0, true and "1500", as the Python check did.
		if mtu, err := strconv.Atoi(string(raw)); err != nil || mtu < 576 || mtu > 65535 {
			return nil, fail(invalidConfig, "network configuration: mtu must be an integer in 576..65535", "")
		}
	}
	if raw, ok := fields["agentSocket"]; ok && string(raw) != "null" {
		path, ok := stringField(fields, "agentSocket")
		if !ok {
			return nil, fail(invalidConfig, "network configuration: agentSocket must be a string", "")
		}
		conf.agentSocket = path
	}
	if raw, ok := fields["prevResult"]; ok && string(raw) != "null" && !bytes.HasPrefix(raw, []byte("{")) {
		return nil, fail(invalidConfig, "network configuration: prevResult must be an object", "")
	}
	return conf, nil
}

func stringField(fields map[string]json.RawMessage, key string) (string, bool) {
	raw, ok := fields[key]
	if !ok {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

func supported(version string) bool {
	for _, v := range supportedVersions {
		if v == version {
			return true
		}
	}
	return false
}

// atLeast compares dotted versions numerically ("0.4.0" < "1.0.0" < "1.1.0").
func atLeast(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	ma, err1 := strconv.Atoi(parts[0])
	mi := 0
	var err2 error
	if len(parts) > 1 {
		mi, err2 = strconv.Atoi(parts[1])
	}
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}

// parseCNIArgs reads CNI_ARGS (`K=V;K=V`).
func parseCNIArgs(text string) (map[string]string, *cniError) {
	args := map[string]string{}
	for _, pair := range strings.Split(text, ";") {
		if pair == "" {
			continue
		}
		key, value, found := strings.Cut(pair, "=")
		if !found || key == "" {
			return nil, fail(invalidEnvironment, fmt.Sprintf("CNI_ARGS: malformed pair %q", pair), "expected K=V;K=V")
		}
		args[key] = value
	}
	return args, nil
}
