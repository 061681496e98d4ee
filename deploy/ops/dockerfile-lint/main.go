// dockerfile-lint parses a Dockerfile with BuildKit's own parser and runs the
// lint rules BuildKit applies while parsing instructions (the rules `docker
// build --check` reports from this stage: casing, stage names, deprecated
// instructions...). Docker itself is not needed.
//
//	dockerfile-lint deploy/Dockerfile
//
// Exit 0: clean; 1: does not parse; 3: lint findings. Built by deploy/ops/tools.sh.
package main

import (
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-lint DOCKERFILE")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		fmt.Println("parse error:", err)
		os.Exit(1)
	}
	problems := 0
	for _, w := range res.Warnings {
		problems++
		fmt.Printf("parser warning: %s (line %d)\n", w.Short, w.Location.Start.Line)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		problems++
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		fmt.Printf("lint %s: %s (line %d)\n", rule, msg, line)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		fmt.Println("instruction error:", err)
		os.Exit(1)
	}
	for _, s := range stages {
		fmt.Printf("stage %q FROM %s: %d instructions\n", s.Name, s.BaseName, len(s.Commands))
	}
	if problems > 0 {
		os.Exit(3)
	}
}
