#!/usr/bin/env bash
# Installs cloudlet on this Debian host and starts the daemon:
#   host packages + libvirtd (setup-host.sh), release build, binaries in /usr/local/bin,
#   config in /etc/cloudlet, the systemd unit, shell completions and man pages.
# Without systemd as init (containers), starts cloudletd in the background instead.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

bash scripts/setup-host.sh
cargo build --release --locked -p cloudletd -p cloudlet
install -m 0755 target/release/cloudletd target/release/cloudlet /usr/local/bin/
install -d -m 0700 /etc/cloudlet
new_config=0
if [ ! -e /etc/cloudlet/cloudletd.toml ]; then
  install -m 0600 daemon/packaging/cloudletd.toml /etc/cloudlet/
  new_config=1
fi
# kvm only where it works (scripts/detect-domain-type.sh says why): a new config gets the
# detected type; an existing one is switched to qemu where kvm cannot work, and otherwise
# left as its owner set it.
domain_type=$(bash scripts/detect-domain-type.sh)
if [ "$new_config" = 1 ] || [ "$domain_type" = qemu ]; then
  sed -i "s/^domain_type = \"[a-z]*\"/domain_type = \"$domain_type\"/" /etc/cloudlet/cloudletd.toml
fi
echo "install: $(grep '^domain_type' /etc/cloudlet/cloudletd.toml)"
install -d /usr/local/share/doc/cloudlet /usr/local/share/man/man1 \
  /usr/share/bash-completion/completions
install -m 0644 README.md /usr/local/share/doc/cloudlet/
cloudlet completions bash > /usr/share/bash-completion/completions/cloudlet
cloudlet man --dir /usr/local/share/man/man1

if [ -d /run/systemd/system ]; then
  install -m 0644 daemon/packaging/cloudletd.service /etc/systemd/system/
  systemctl daemon-reload
  systemctl enable --now cloudletd
  systemctl --no-pager status cloudletd | head -5
else
  echo "no systemd here: starting cloudletd in the background (log: /var/log/cloudletd.log)"
  pkill -x cloudletd || true
  nohup /usr/local/bin/cloudletd --config /etc/cloudlet/cloudletd.toml \
    >>/var/log/cloudletd.log 2>&1 &
fi
for _ in $(seq 50); do
  curl -sf http://127.0.0.1:8021/health >/dev/null && break
  sleep 0.2
done
curl -sf http://127.0.0.1:8021/health && echo
echo "cloudlet installed: try \`cloudlet list-base\`"
