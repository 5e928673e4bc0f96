#!/bin/sh
# Runs once per real compile of libllama (see CMakeLists.txt).
if [ -n "$FAKE_LLAMA_BUILD_LOG" ]; then echo "build $$" >> "$FAKE_LLAMA_BUILD_LOG"; fi
if [ -n "$FAKE_LLAMA_STARTED" ]; then : > "$FAKE_LLAMA_STARTED"; fi
if [ -n "$FAKE_LLAMA_RELEASE" ]; then
    while [ ! -e "$FAKE_LLAMA_RELEASE" ]; do sleep 0.05; done
fi
: > "$1"
