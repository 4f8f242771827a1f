# Shared by the benchmark scripts: `. bench/lib.sh; bench_workdir NAME` makes a temporary
# directory $work (removed on exit) holding $work/config.toml, a configuration whose state and
# runtime directories live inside it (rootless: with the rlimit fallback, since an ordinary
# user usually cannot create cgroups).
bench_workdir() {
  work=$(mktemp -d "/tmp/bulwark-$1.XXXXXX")
  chmod 0755 "$work"
  trap 'rm -rf "$work"' EXIT
  cat > "$work/config.toml" <<TOML
[limits]
$( [[ $(id -u) != 0 ]] && echo 'allow_rlimit_fallback = true' )
[paths]
state_dir = "$work/state"
runtime_dir = "$work/run"
TOML
}

# `bench_require TOOL...`: exits 0 with a SKIP line (never counted as a result) unless every
# tool named is installed.
bench_require() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed" >&2; exit 0; }
  done
}
