#!/usr/bin/env bash
# Builds the release worker of an earlier commit, for `bench/run.sh` with BASELINE=: the
# before/after cost of a change on the reference workload, measured in one command.
#
# Usage: bench/baseline.sh COMMIT      prints the path of the built binary
# The commit is checked out into $HOME/.cache/tributary/baseline-COMMIT (a git worktree) and built
# with its own target dir beside it, so the project's own target dir is untouched.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
COMMIT="$(git -C "$ROOT" rev-parse --short "${1:?usage: bench/baseline.sh COMMIT}")"
TREE="$HOME/.cache/tributary/baseline-$COMMIT"
if [ ! -d "$TREE" ]; then
  git -C "$ROOT" worktree add --detach "$TREE" "$COMMIT" >&2
fi
(cd "$TREE" && CARGO_TARGET_DIR="$TREE-target" cargo build --release -q -p worker --bin worker >&2)
echo "$TREE-target/release/worker"
