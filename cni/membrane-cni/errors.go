// Error codes and the CNI error body.
//
// The codes 1-99 are reserved by the CNI specification; 199 is membrane's internal error
// (the same numbers as membrane/cni_types.py, which the agent uses).
package main

import (
	"encoding/json"
)

const (
	incompatibleVersion = 1
	invalidEnvironment  = 4
	ioFailure           = 5
	decodeFailure       = 6
	invalidConfig       = 7
	tryAgainLater       = 11
	pluginNotAvailable  = 50
	internalError       = 199
)

// cniError is a failure reported as CNI error JSON on stdout with a non-zero exit.
type cniError struct {
	Code    int
	Msg     string
	Details string
}

func (e *cniError) Error() string { return e.Msg }

func fail(code int, msg, details string) *cniError {
	return &cniError{Code: code, Msg: msg, Details: details}
}

// body is the error object of the specification; cniVersion is the configuration's when it
// had a readable one.
func (e *cniError) body(cniVersion string) []byte {
	out := struct {
		CNIVersion string `json:"cniVersion"`
		Code       int    `json:"code"`
		Msg        string `json:"msg"`
		Details    string `json:"details,omitempty"`
	}{cniVersion, e.Code, e.Msg, e.Details}
	data, _ := json.Marshal(out) // strings and an int: cannot fail
	return data
}
