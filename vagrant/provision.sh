#!/bin/sh
# Provision one minikubenet node (run by Vagrant as root inside the VM):
#
#   provision.sh ROLE NAME IP ETCD_ENDPOINT POD_NETWORK      ROLE: etcd (node1) | node
#
# Only package installs and the project's own commands: the agent makes the bridge,
# the VXLAN device, the routes and the masquerade rules itself.
#   1. install the project's wheel (uploaded to /tmp/minikubenet-dist) into /opt/minikubenet;
#   2. node1: etcd listening on the underlay, then `minikubenet network init --backend vxlan`;
#   3. the CNI plugin in /opt/cni/bin and a conflist in /etc/cni/net.d;
#   4. minikubenet-agent (and minikubenet-proxy, when the package has it) as systemd units,
#      or as supervised processes on a box without systemd.
set -eu
ROLE=$1 NAME=$2 IP=$3 ETCD=$4 NETWORK=$5
VENV=/opt/minikubenet
DIST=/tmp/minikubenet-dist
UNITS=/tmp/minikubenet-agents
say() { echo "provision $NAME: $*"; }

# -- 1. the package -----------------------------------------------------------------------------
if [ -x "$VENV/bin/python" ]; then
  # the local box: runtime dependencies are in the venv already, the guest has no network
  say "installing $(cd "$DIST" && ls minikubenet-*.whl) (offline)"
  "$VENV/bin/pip" install -q --no-index --no-compile --find-links "$DIST" --force-reinstall --no-deps "$DIST"/minikubenet-*.whl
else
  # a downloaded box (e.g. debian/bookworm64 on a lab host): Debian packages and PyPI
  say "installing Debian packages, then the project with its dependencies from PyPI"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-venv iproute2 iptables nftables conntrack \
    etcd-server etcd-client \
    iperf3 tcpdump >/dev/null
  [ "$ROLE" = etcd ] || systemctl disable --now etcd 2>/dev/null || true
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --find-links "$DIST" "$DIST"/minikubenet-*.whl
fi
for exe in "$VENV"/bin/minikubenet*; do ln -sf "$exe" /usr/local/bin/; done
HAS_SYSTEMD=0
[ -d /run/systemd/system ] && HAS_SYSTEMD=1

# -- 2. etcd on node1 -----------------------------------------------------------------------------
if [ "$ROLE" = etcd ]; then
  say "etcd on $IP:2379"
  cat > /etc/default/etcd <<EOF
ETCD_NAME=$NAME
ETCD_DATA_DIR=/var/lib/etcd/minikubenet
ETCD_LISTEN_CLIENT_URLS=http://$IP:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$IP:2379
ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_CLUSTER=$NAME=http://127.0.0.1:2380
EOF
  if [ $HAS_SYSTEMD = 1 ]; then
    systemctl enable -q etcd
    systemctl restart etcd
  else
    (set -a; . /etc/default/etcd; setsid etcd >>/var/log/etcd.log 2>&1 &)
  fi
  minikubenet network init --etcd-endpoints http://127.0.0.1:2379 --network "$NETWORK" --backend vxlan
fi

# -- 3. the CNI plugin and its configuration --------------------------------------------------
# /opt/cni/bin/minikubenet(-ipam) and /etc/cni/net.d/10-minikubenet.conflist; idempotent
"$VENV/bin/minikubenet" install --cni-version 1.0.0

# -- 4. the daemons -------------------------------------------------------------------------------
cat > /etc/default/minikubenet-agent <<EOF
MINIKUBENET_ETCD_ENDPOINTS=$ETCD
MINIKUBENET_AGENT_ARGS=--public-ip $IP --node-name $NAME
EOF
cat > /etc/default/minikubenet-proxy <<EOF
MINIKUBENET_ETCD_ENDPOINTS=$ETCD
MINIKUBENET_PROXY_ARGS=--node-name $NAME
EOF
daemons=minikubenet-agent
[ -x "$VENV/bin/minikubenet-proxy" ] && daemons="$daemons minikubenet-proxy"
for d in $daemons; do
  if [ $HAS_SYSTEMD = 1 ]; then
    if [ -f "$UNITS/$d.service" ]; then
      install -m 644 "$UNITS/$d.service" /etc/systemd/system/
    else
      # no unit shipped (yet): the plain one
      printf '[Unit]\nDescription=%s\nAfter=network-online.target\n\n[Service]\nEnvironmentFile=-/etc/default/%s\nExecStart=/usr/local/bin/%s $MINIKUBENET_%s_ARGS\nRestart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n' \
        "$d" "$d" "$d" "$(echo "${d#minikubenet-}" | tr a-z A-Z)" > "/etc/systemd/system/$d.service"
    fi
    systemctl daemon-reload
    systemctl enable -q "$d"
    systemctl restart "$d"
  else
    # no systemd: a shell loop supervises the daemon (restarts it when it exits)
    var=MINIKUBENET_$(echo "${d#minikubenet-}" | tr a-z A-Z)_ARGS
    (set -a; . "/etc/default/$d"; eval "args=\$$var"
     setsid sh -c "while :; do /usr/local/bin/$d $args; sleep 2; done" >>"/var/log/$d.log" 2>&1 </dev/null &)
  fi
done
rm -rf "$DIST" "$UNITS"

# the agent writes subnet.env when it holds its lease and serves CNI requests
i=0
until [ -s /run/minikubenet/subnet.env ]; do
  i=$((i + 1))
  if [ $i -gt 300 ]; then
    say "the agent is not ready after 300s"
    if [ $HAS_SYSTEMD = 1 ]; then journalctl -u minikubenet-agent --no-pager | tail -20; fi
    exit 1
  fi
  sleep 1
done
say "ready: $(tr '\n' ' ' < /run/minikubenet/subnet.env)"
