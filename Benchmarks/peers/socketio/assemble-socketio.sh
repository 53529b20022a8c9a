#!/usr/bin/env bash
# Assembles socket.io 4.8.1 (server + socket.io-client) for Node.js without the npm registry, for the benchmark
# peer beside this script: TypeScript sources from a git clone of the socket.io monorepo
# (https://github.com/socketio/socket.io; SIO_GITDIR names its git directory), transpiled file by file with Debian's
# esbuild; third-party dependencies from Debian's node-* packages. Nothing of socket.io is kept in this repository.
# Result: $SIO_ROOT/node_modules (default /tmp/sio; use with NODE_PATH=/tmp/sio/node_modules). Idempotent.
# Where npm works, `npm install socket.io@4.8.1` does the same.
set -euo pipefail

ROOT=${SIO_ROOT:-/tmp/sio}
GITDIR=${SIO_GITDIR:-/work/.mirror/socketio+socket.io/repo}
TAG=${SIO_TAG:-socket.io@4.8.1}
SRC=$ROOT/src
NM=$ROOT/node_modules
PACKAGES="socket.io-component-emitter engine.io-parser engine.io socket.io-adapter socket.io-parser socket.io engine.io-client socket.io-client"
DEBIAN_PKGS="esbuild node-ws node-debug node-cors node-accepts node-cookie node-base64id node-vary node-xmlhttprequest"
# Third-party modules the built packages require (their own dependencies are added below).
THIRD_PARTY="ws debug cors accepts cookie base64id vary xmlhttprequest"

# 1. Debian packages (installed only when missing).
missing=""
for p in $DEBIAN_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi

# 2. Sources at the tag (fall back to HEAD when the tag is absent).
git --git-dir="$GITDIR" rev-parse -q --verify "refs/tags/$TAG" >/dev/null || TAG=HEAD
echo "socket.io sources: $TAG ($(git --git-dir="$GITDIR" rev-parse "$TAG^{commit}"))"
rm -rf "$SRC" "$NM"
mkdir -p "$SRC" "$NM"
for p in $PACKAGES; do
  # The snapshot lacks a few large test fixtures; `git archive` complains about them but writes the asked paths.
  paths="packages/$p/lib packages/$p/package.json packages/$p/LICENSE"
  [ "$p" = socket.io ] && paths="$paths packages/socket.io/client-dist"
  (git --git-dir="$GITDIR" archive "$TAG" $paths 2>/dev/null || true) | tar -x -C "$SRC"
  test -f "$SRC/packages/$p/package.json" || { echo "missing sources of $p" >&2; exit 1; }
done

# 3. Transpile each package's lib/*.ts to CommonJS, one output file per input file (no bundling), into the
#    directory its package.json "main" points at.
outdir_of() {
  case "$1" in
    engine.io) echo build ;;
    socket.io|socket.io-adapter) echo dist ;;
    socket.io-component-emitter) echo lib ;;
    *) echo build/cjs ;;
  esac
}
for p in $PACKAGES; do
  pkgsrc=$SRC/packages/$p
  name=$(node -p "require('$pkgsrc/package.json').name")
  dest=$NM/$name
  mkdir -p "$dest"
  cp "$pkgsrc/package.json" "$pkgsrc/LICENSE" "$dest/" 2>/dev/null || cp "$pkgsrc/package.json" "$dest/"
  if [ "$p" = socket.io-component-emitter ]; then
    cp -r "$pkgsrc/lib" "$dest/lib"            # already JavaScript (lib/cjs, lib/esm)
  else
    interop=false
    case "$p" in socket.io|socket.io-client|engine.io-client) interop=true ;; esac
    if [ "$interop" = false ]; then
      # These packages are compiled by tsc without esModuleInterop, where `import * as x from "pkg"` is
      # `const x = require("pkg")` (engine.io calls `accepts(req)` that way). esbuild would wrap the namespace
      # and the call would fail, so spell those imports as `import x = require("pkg")`, which both compile alike.
      find "$pkgsrc/lib" -name '*.ts' ! -name '*.d.ts' -print0 |
        xargs -0 sed -i -E 's/^import \* as ([A-Za-z_$][A-Za-z0-9_$]*) from "([^".][^"]*)";/import \1 = require("\2");/'
    fi
    # Assignment semantics for class fields, as tsc emits for the packages' own targets (es2017/es2018).
    cat > "$pkgsrc/tsconfig.json" <<EOF
{ "compilerOptions": { "target": "es2018", "module": "commonjs", "esModuleInterop": $interop, "useDefineForClassFields": false } }
EOF
    out=$(outdir_of "$p")
    mapfile -t files < <(find "$pkgsrc/lib" -name '*.ts' ! -name '*.d.ts' | sort)
    esbuild "${files[@]}" --outbase="$pkgsrc/lib" --outdir="$dest/$out" --format=cjs --platform=node \
      --target=node18 --tsconfig="$pkgsrc/tsconfig.json" --log-level=warning
    # Plain .js files shipped in lib (none expected, but keep the layout complete).
    (cd "$pkgsrc/lib" && find . -name '*.js' -exec cp --parents {} "$dest/$out/" \;)
  fi
  [ "$p" = socket.io ] && cp -r "$pkgsrc/client-dist" "$dest/client-dist"
  # package.json: keep name/version/deps, point "main" at the CommonJS build, drop the ESM/browser maps
  # (their files are not built here).
  node -e '
    const fs = require("fs"); const f = process.argv[1]; const j = JSON.parse(fs.readFileSync(f, "utf8"));
    for (const k of ["exports", "browser", "module", "types", "typings", "scripts", "devDependencies", "files"]) delete j[k];
    j.main = process.argv[2];
    j.assembledFrom = process.argv[3];
    fs.writeFileSync(f, JSON.stringify(j, null, 2) + "\n");
  ' "$dest/package.json" "./$(outdir_of "$p")/$( [ "$p" = engine.io ] && echo engine.io.js || echo index.js )" \
    "socket.io monorepo $TAG, packages/$p, transpiled by esbuild $(esbuild --version)"
done
# socket.io-client's own postcompile.sh appends this, so that `require("socket.io-client")(url)` works too.
printf '\nmodule.exports = lookup;\n' >> "$NM/socket.io-client/build/cjs/index.js"
# The component-emitter's main is lib/cjs/index.js.
node -e '
  const fs = require("fs"); const f = process.argv[1]; const j = JSON.parse(fs.readFileSync(f, "utf8"));
  j.main = "./lib/cjs/index.js"; fs.writeFileSync(f, JSON.stringify(j, null, 2) + "\n");' "$NM/@socket.io/component-emitter/package.json"

# 4. Third-party modules from Debian (/usr/share/nodejs), with their dependency closure, copied (not linked) so
#    that the tree resolves on its own.
closure=$(node -e '
  const seen = new Set(); const todo = process.argv.slice(1);
  while (todo.length) {
    const n = todo.pop(); if (seen.has(n)) continue; seen.add(n);
    const j = require("/usr/share/nodejs/" + n + "/package.json");
    for (const d of Object.keys(j.dependencies || {})) todo.push(d);
  }
  console.log([...seen].sort().join(" "));' $THIRD_PARTY)
for m in $closure; do
  mkdir -p "$(dirname "$NM/$m")"
  cp -rL "/usr/share/nodejs/$m" "$NM/$m"
done
echo "debian modules: $(for m in $closure; do printf '%s@%s ' "$m" "$(node -p "require('$NM/$m/package.json').version")"; done)"

# 5. xmlhttprequest-ssl (engine.io-client's Node polling transport) is not in Debian: a shim over Debian's
#    node-xmlhttprequest 1.8.0, the package xmlhttprequest-ssl was forked from. Only used by a socket.io-client
#    that polls with the default XHR transport; the Fetch transport and WebSocket do not need it.
mkdir -p "$NM/xmlhttprequest-ssl"
cat > "$NM/xmlhttprequest-ssl/package.json" <<'EOF'
{ "name": "xmlhttprequest-ssl", "version": "0.0.0-shim", "main": "index.js",
  "description": "shim: Debian's node-xmlhttprequest 1.8.0 exported as xmlhttprequest-ssl" }
EOF
cat > "$NM/xmlhttprequest-ssl/index.js" <<'EOF'
"use strict";
// xmlhttprequest-ssl exports the constructor itself; xmlhttprequest 1.8.0 exports { XMLHttpRequest }.
const { XMLHttpRequest } = require("xmlhttprequest");
module.exports = function XMLHttpRequestShim(opts) {
  const xhr = new XMLHttpRequest();
  // engine.io-client passes { xd, cookieJar, ...options }; only credentials are meaningful here.
  if (opts && opts.withCredentials) xhr.withCredentials = true;
  return xhr;
};
EOF

# 6. Check that everything loads.
NODE_PATH=$NM node -e '
  const v = (n) => require(n + "/package.json").version;
  require("socket.io"); require("socket.io-client");
  console.log("ok: socket.io " + v("socket.io") + ", socket.io-client " + v("socket.io-client") +
    ", engine.io " + v("engine.io") + ", engine.io-client " + v("engine.io-client") +
    ", socket.io-parser " + v("socket.io-parser") + ", engine.io-parser " + v("engine.io-parser") +
    ", socket.io-adapter " + v("socket.io-adapter") + ", @socket.io/component-emitter " + v("@socket.io/component-emitter") +
    ", ws " + v("ws") + ", node " + process.version);'

# 7. The smoke test beside this script, when present: namespace + rooms + acks over websocket and polling.
if [ -f "$ROOT/verify.js" ]; then
  NODE_PATH=$NM timeout 60 node "$ROOT/verify.js"
fi
