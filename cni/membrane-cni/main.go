// membrane-cni: the CNI plugin kubelet executes for every pod.
//
// A thin client of the membrane agent: it checks what the CNI specification asks of a plugin
// (command, environment, a readable configuration of a supported version), forwards
// ADD/DEL/CHECK/STATUS/GC over the agent's unix socket and relays the agent's result or error
// JSON. Every decision about the pod (netns, interface names, addresses, rollback) is the
// agent's. A static Go binary so that nodes need no interpreter (build: cni/build.sh).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	stdin, err := io.ReadAll(os.Stdin)
	if err != nil {
		stdin = nil
	}
	out, cerr := run(os.Getenv, stdin)
	if cerr != nil {
		out = cerr.body(confVersion(stdin))
	}
	os.Stdout.Write(append(out, '\n'))
	if cerr != nil {
		os.Exit(1)
	}
}

// run executes one CNI command and returns what goes to stdout on success.
func run(getenv func(string) string, stdin []byte) ([]byte, *cniError) {
	command := getenv("CNI_COMMAND")
	if command == "VERSION" {
		return versionJSON(), nil
	}
	required, known := requiredEnv[command]
	if !known {
		return nil, fail(invalidEnvironment,
			fmt.Sprintf("CNI_COMMAND %q is not one of ADD, DEL, CHECK, STATUS, GC, VERSION", command), "")
	}
	var missing []string
	for _, name := range required {
		if getenv(name) == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return nil, fail(invalidEnvironment,
			fmt.Sprintf("missing environment variable(s) for %s: %s", command, strings.Join(missing, ", ")), "")
	}
	conf, cerr := parseConf(stdin)
	if cerr != nil {
		return nil, cerr
	}
	if command == "CHECK" && !atLeast(conf.cniVersion, 0, 4) {
		return nil, fail(incompatibleVersion, "CHECK is not defined for cniVersion "+conf.cniVersion, "")
	}
	if (command == "STATUS" || command == "GC") && !atLeast(conf.cniVersion, 1, 1) {
		return nil, fail(incompatibleVersion, command+" needs cniVersion 1.1.0 or later", "")
	}
	args, cerr := parseCNIArgs(getenv("CNI_ARGS"))
	if cerr != nil {
		return nil, cerr
	}
	socket := getenv("MEMBRANE_AGENT_SOCKET")
	if socket == "" {
		socket = conf.agentSocket
	}
	if socket == "" {
		socket = defaultSocket
	}
	result, cerr := callAgent(socket, &request{
		Op: "cni", Command: command, ContainerID: getenv("CNI_CONTAINERID"), Netns: getenv("CNI_NETNS"),
		IfName: getenv("CNI_IFNAME"), Args: args, Path: getenv("CNI_PATH"), Config: conf.raw,
	})
	if cerr != nil {
		if command == "STATUS" && (cerr.Code == tryAgainLater || cerr.Code == ioFailure) {
			return nil, fail(pluginNotAvailable, "membrane agent is not available", cerr.Details)
		}
		return nil, cerr
	}
	if command == "ADD" && len(result) > 0 && string(result) != "null" {
		return result, nil // the agent's result, verbatim
	}
	return nil, nil
}

func versionJSON() []byte {
	body := struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}{latestVersion, supportedVersions}
	data, _ := json.Marshal(body)
	return data
}

// confVersion is the configuration's cniVersion for an error body, the latest otherwise.
func confVersion(stdin []byte) string {
	var conf struct {
		CNIVersion interface{} `json:"cniVersion"`
	}
	if json.Unmarshal(stdin, &conf) == nil {
		if v, ok := conf.CNIVersion.(string); ok && v != "" {
			return v
		}
	}
	return latestVersion
}
