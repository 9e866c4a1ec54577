# shellcheck shell=bash
# The one dev-profile build that .ci/run, scripts/test, scripts/chaos and
# `scripts/build-image --profile dev` share: every target of the workspace in one feature
# resolution, so the binaries, the test binaries and the chaos runner come out of one compile of
# the dependencies (building `-p worker --bin worker` alone resolves features without the test
# crates' dev-dependencies and compiled much of the tree a second time).
build_workspace_dev() {
  cargo build -q --workspace --all-targets
}
