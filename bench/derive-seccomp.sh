#!/usr/bin/env bash
# Derive the syscall names real CI workloads use, one list per workload.
#
# Usage: bench/derive-seccomp.sh OUTDIR
#
# Runs each workload (gcc+make, python, node, git, cargo, shell) as one
# `bash` script under `strace -f`, following every child, thread and exec, and
# writes OUTDIR/<workload>.txt: the sorted, de-duplicated syscall names seen
# (including calls that failed). It creates its own throwaway projects under a
# temporary directory and needs no network. Requires: strace, gcc, make,
# python3, node, git, cargo, rustc, coreutils, tar, xz, gzip, curl, procps,
# util-linux (flock, setsid).
#
# The lists feed sandbox/src/seccomp/table.rs; its unit tests fail when a list
# names a syscall that table.rs does not classify. See
# sandbox/src/seccomp/derived/README.md for how the checked-in lists were made.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

for tool in strace gcc make python3 node git cargo rustc tar xz gzip curl ps flock setsid; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/derive-seccomp.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# Use the real interpreter, not a version-manager shim, so python.txt is python.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')

# trace NAME SCRIPT: run SCRIPT with bash under strace, write OUT/NAME.txt.
trace() {
    local name=$1 script=$2
    local raw="$WORK/$name.strace"
    echo "== $name" >&2
    strace -f -qq -o "$raw" -- bash -euo pipefail -c "$script"
    # Lines look like `PID  name(args...`; unknown calls appear as `syscall_0x1b6(`.
    sed -nE 's/^[0-9]+ +([a-z0-9_]+)\(.*/\1/p' "$raw" | LC_ALL=C sort -u >"$OUT/$name.txt"
    echo "   $(wc -l <"$OUT/$name.txt") syscalls" >&2
}

# ---------------------------------------------------------------- gcc + make
mkdir -p "$WORK/cproj"
cat >"$WORK/cproj/util.h" <<'EOF'
#ifndef UTIL_H
#define UTIL_H
int add(int a, int b);
#endif
EOF
cat >"$WORK/cproj/util.c" <<'EOF'
#include "util.h"
int add(int a, int b) { return a + b; }
EOF
cat >"$WORK/cproj/main.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include "util.h"
int main(void) {
    char *p = malloc(1 << 20);
    if (!p) return 1;
    printf("%d\n", add(2, 3));
    free(p);
    return 0;
}
EOF
printf 'CFLAGS = -O2 -Wall\nall: demo\ndemo: main.o util.o\n\t$(CC) $(CFLAGS) -o $@ $^\n%%.o: %%.c util.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\nclean:\n\trm -f demo *.o\n.PHONY: all clean\n' \
    >"$WORK/cproj/Makefile"
trace gcc-make "cd '$WORK/cproj' && make -j2 && ./demo && make clean"

# ---------------------------------------------------------------- python
cat >"$WORK/py.py" <<'EOF'
import compileall, hashlib, json, multiprocessing, os, queue, shutil, socket
import subprocess, sys, tempfile, threading

def square(x):
    return x * x

def main():
    d = tempfile.mkdtemp()
    p = os.path.join(d, "a.json")
    with open(p, "w") as f:
        json.dump({"k": list(range(100))}, f)
    with open(p) as f:
        data = json.load(f)
    assert data["k"][99] == 99
    shutil.copy(p, p + ".bak")
    os.rename(p + ".bak", p + ".old")
    os.stat(p); os.listdir(d); os.chmod(p, 0o600)
    print(hashlib.sha256(open(p, "rb").read()).hexdigest())

    print(subprocess.run(["echo", "hi"], capture_output=True, check=True).stdout)
    print(subprocess.check_output("echo piped | tr a-z A-Z", shell=True))

    q = queue.Queue(); lock = threading.Lock(); total = [0]
    def work(n):
        with lock:
            total[0] += n
        q.put(n)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert total[0] == 6

    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(2) as pool:            # SemLock -> /dev/shm/sem.*
            assert pool.map(square, range(10))[3] == 9

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0)); srv.listen(1)
    port = srv.getsockname()[1]
    def serve():
        c, _ = srv.accept()
        c.sendall(c.recv(64).upper()); c.close()
    t = threading.Thread(target=serve); t.start()
    cl = socket.create_connection(("127.0.0.1", port))
    cl.sendall(b"ping"); assert cl.recv(64) == b"PING"; cl.close()
    t.join(); srv.close()

    src = os.path.join(d, "pkg"); os.mkdir(src)
    with open(os.path.join(src, "m.py"), "w") as f:
        f.write("def f():\n    return 1\n")
    assert compileall.compile_dir(src, quiet=1, workers=2)
    shutil.rmtree(d)

if __name__ == "__main__":
    main()
EOF
trace python "'$PYTHON' '$WORK/py.py' && '$PYTHON' -m venv '$WORK/venv' && '$WORK/venv/bin/pip' --version"

# ---------------------------------------------------------------- node
cat >"$WORK/node.js" <<'EOF'
const fs = require('fs'), os = require('os'), path = require('path');
const cp = require('child_process'), http = require('http');
const zlib = require('zlib'), crypto = require('crypto');
const { Worker } = require('worker_threads');
const d = fs.mkdtempSync(path.join(os.tmpdir(), 'n-'));
fs.writeFileSync(path.join(d, 'a.txt'), 'hello'.repeat(1000));
const buf = fs.readFileSync(path.join(d, 'a.txt'));
fs.renameSync(path.join(d, 'a.txt'), path.join(d, 'b.txt'));
fs.readdirSync(d); fs.statSync(d);
console.log(cp.execSync('echo hi | tr a-z A-Z').toString().trim());
const gz = zlib.gzipSync(buf);
if (zlib.gunzipSync(gz).length !== buf.length) throw new Error('zlib');
console.log(crypto.createHash('sha256').update(buf).digest('hex'));
crypto.randomBytes(32); crypto.pbkdf2Sync('pw', 'salt', 1000, 32, 'sha256');
const w = new Worker('const { parentPort } = require("worker_threads"); parentPort.postMessage(6 * 7);', { eval: true });
w.on('message', (m) => {
  if (m !== 42) throw new Error('worker');
  const srv = http.createServer((req, res) => res.end('pong'));
  srv.listen(0, '127.0.0.1', () => {
    http.get({ host: '127.0.0.1', port: srv.address().port, path: '/' }, (res) => {
      let body = '';
      res.on('data', (c) => body += c);
      res.on('end', () => {
        if (body !== 'pong') throw new Error('http');
        srv.close();
        fs.promises.rm(d, { recursive: true }).then(() => console.log('node ok'));
      });
    });
  });
});
EOF
trace node "node -e \"\$(cat '$WORK/node.js')\""

# ---------------------------------------------------------------- git
trace git "
export GIT_AUTHOR_NAME=ci GIT_AUTHOR_EMAIL=ci@example.invalid
export GIT_COMMITTER_NAME=ci GIT_COMMITTER_EMAIL=ci@example.invalid
mkdir -p '$WORK/repo' && cd '$WORK/repo'
git init -q -b main
echo one >a.txt && mkdir sub && echo two >sub/b.txt
git add -A && git commit -q -m first
git branch feature && git checkout -q feature
echo three >>a.txt && git commit -q -am second
git checkout -q main && git merge -q --no-edit feature
git log --oneline --all >/dev/null
git gc -q
git clone -q '$WORK/repo' '$WORK/clone'
git clone -q --no-local '$WORK/repo' '$WORK/clone2'
mkdir '$WORK/extract'
git archive --format=tar HEAD | tar -x -C '$WORK/extract'
test -f '$WORK/extract/sub/b.txt'
"

# ---------------------------------------------------------------- cargo
cat >"$WORK/hello.rs" <<'EOF'
use std::thread;
fn main() {
    let h = thread::spawn(|| 6 * 7);
    println!("{}", h.join().unwrap());
}
EOF
trace cargo "
export CARGO_TARGET_DIR='$WORK/sc-demo/target'
cargo new -q --offline '$WORK/sc-demo'
cd '$WORK/sc-demo'
cargo build -q --offline
cargo test -q --offline
cargo run -q --offline
rustc -O --edition 2021 '$WORK/hello.rs' -o '$WORK/hello' && '$WORK/hello'
"

# ---------------------------------------------------------------- shell basics
trace shell "
cd '$WORK' && mkdir -p sh/a/b/c && cd sh
sh -c 'printf \"c\nb\na\n\" | sort | uniq | tr a-z A-Z >sorted.txt'
seq 1 2000 >a/b/c/nums.txt
find . -name '*.txt' -type f | sort >found.txt
sed -e 's/1/one/g' a/b/c/nums.txt | awk '{n++} END {print n}' >count.txt
tar czf t.tgz a && mkdir x && tar xzf t.tgz -C x
cp -a a acopy && ln -s acopy link && chmod -R go-w acopy && chmod 0755 link/b
date -u +%s >/dev/null && sleep 0.1
timeout 5 sleep 0.1 && ! timeout 0.2 sleep 5
nohup true >/dev/null 2>&1
setsid -w sh -c true
flock lock.f -c 'echo locked >/dev/null'
T=\$(mktemp) && sha256sum a/b/c/nums.txt >\"\$T\" && sha256sum -c \"\$T\" >/dev/null && rm -f \"\$T\"
xz -k a/b/c/nums.txt && xz -dc a/b/c/nums.txt.xz >/dev/null
gzip -k count.txt && gzip -dc count.txt.gz >/dev/null
curl --version >/dev/null
ps -ef >/dev/null
sleep 30 & kill \$! && wait \$! || true
cd .. && rm -rf sh
"

echo "lists written to $OUT" >&2
