// libcni-client runs a CNI network configuration list the way container runtimes do,
// through the reference library (github.com/containernetworking/cni/libcni): capability
// arguments become runtimeConfig, each plugin gets the previous one's result, results are
// cached for CHECK and DEL. Built at test time (tests/netns/test_cni_chain.py) from Debian's
// golang-github-appc-cni-dev, offline in GOPATH mode.
//
//	libcni-client VALIDATE|ADD|CHECK|DEL CONFLIST CONTAINER_ID NETNS IFNAME [CAPABILITY_ARGS_JSON]
//
// CNI_PATH lists the plugin directories; CNI_CACHE_DIR is libcni's cache (results for CHECK
// and DEL). ADD prints the final result; a failure prints the error and exits 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(argv []string) error {
	if len(argv) < 5 {
		return fmt.Errorf("usage: libcni-client VALIDATE|ADD|CHECK|DEL CONFLIST CONTAINER_ID NETNS IFNAME [CAPABILITY_ARGS_JSON]")
	}
	command, confPath, containerID, netns, ifName := argv[0], argv[1], argv[2], argv[3], argv[4]
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		return fmt.Errorf("reading %s: %w", confPath, err)
	}
	rt := &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       netns,
		IfName:      ifName,
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", containerID}},
	}
	if len(argv) > 5 {
		if err := json.Unmarshal([]byte(argv[5]), &rt.CapabilityArgs); err != nil {
			return fmt.Errorf("capability args: %w", err)
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()
	switch command {
	case "VALIDATE":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(map[string][]string{"capabilities": caps})
	case "ADD":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		return result.Print()
	case "CHECK":
		return cni.CheckNetworkList(ctx, list, rt)
	case "DEL":
		return cni.DelNetworkList(ctx, list, rt)
	}
	return fmt.Errorf("unknown command %q", command)
}
