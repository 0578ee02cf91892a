#!/bin/sh
# Provision one minikubenet node (run by Vagrant as root inside the VM):
#
#   provision.sh ROLE NAME IP ETCD_ENDPOINT POD_NETWORK      ROLE: etcd (node1) | node
#
# Only package installs and the project's own commands: the agent makes the bridge,
# the VXLAN device, the routes and the masquerade rules itself.
#   1. install the project's wheel (uploaded to /tmp/minikubenet-dist) into /opt/minikubenet,
#      and this node's etcd certificates (uploaded to /tmp/minikubenet-pki, made on the host
#      by the Vagrantfile) into /etc/minikubenet/pki, 0600 in 0700;
#   2. node1: etcd listening on the underlay, closed: TLS with client certificates, one
#      etcd user per daemon kind (python -m minikubenet.store.etcd_rbac), then
#      `minikubenet network init --backend vxlan` as the root etcd user;
#   3. the CNI plugin in /opt/cni/bin and a conflist in /etc/cni/net.d;
#   4. minikubenet-agent (and minikubenet-proxy, when the package has it) as systemd units,
#      or as supervised processes on a box without systemd.
set -eu
ROLE=$1 NAME=$2 IP=$3 ETCD=$4 NETWORK=$5
VENV=/opt/minikubenet
DIST=/tmp/minikubenet-dist
UNITS=/tmp/minikubenet-agents
PKI_UPLOAD=/tmp/minikubenet-pki
PKI=/etc/minikubenet/pki
ADMIN_ENV=/etc/minikubenet/etcd-admin.env     # node1: the root etcd user, for etcdctl and our CLI
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

# this node's certificates, root only (etcd's own get a directory of the etcd user below,
# beside this one: the etcd user cannot enter a directory of root's that is 0700)
install -d -m 755 /etc/minikubenet
install -d -m 700 "$PKI"
for f in "$PKI_UPLOAD"/*; do install -m 600 "$f" "$PKI/"; done
rm -rf "$PKI_UPLOAD"

# -- 2. etcd on node1 -----------------------------------------------------------------------------
if [ "$ROLE" = etcd ]; then
  say "etcd on $IP:2379 (TLS, client certificates required)"
  # Debian's unit runs etcd as the user etcd: its certificates in a directory of its own
  EPKI=/etc/minikubenet/etcd
  install -d -m 700 "$EPKI"
  for f in ca.crt server.crt server.key peer.crt peer.key; do install -m 600 "$PKI/$f" "$EPKI/"; done
  if id etcd >/dev/null 2>&1; then chown -R etcd: "$EPKI"; fi
  # etcd op-guide/security.md: clients and peers need a certificate of our CA; with auth
  # enabled the certificate's CN is the etcd user
  cat > /etc/default/etcd <<EOF
ETCD_NAME=$NAME
ETCD_DATA_DIR=/var/lib/etcd/minikubenet
ETCD_LISTEN_CLIENT_URLS=https://$IP:2379,https://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=https://$IP:2379
ETCD_LISTEN_PEER_URLS=https://127.0.0.1:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=https://127.0.0.1:2380
ETCD_INITIAL_CLUSTER=$NAME=https://127.0.0.1:2380
ETCD_CLIENT_CERT_AUTH=true
ETCD_TRUSTED_CA_FILE=$EPKI/ca.crt
ETCD_CERT_FILE=$EPKI/server.crt
ETCD_KEY_FILE=$EPKI/server.key
ETCD_PEER_CLIENT_CERT_AUTH=true
ETCD_PEER_TRUSTED_CA_FILE=$EPKI/ca.crt
ETCD_PEER_CERT_FILE=$EPKI/peer.crt
ETCD_PEER_KEY_FILE=$EPKI/peer.key
EOF
  (umask 077; cat > "$ADMIN_ENV" <<EOF
export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=https://127.0.0.1:2379
export ETCDCTL_CACERT=$PKI/ca.crt ETCDCTL_CERT=$PKI/root.crt ETCDCTL_KEY=$PKI/root.key
export MINIKUBENET_ETCD_ENDPOINTS=https://127.0.0.1:2379
export MINIKUBENET_ETCD_CAFILE=$PKI/ca.crt MINIKUBENET_ETCD_CERTFILE=$PKI/root.crt MINIKUBENET_ETCD_KEYFILE=$PKI/root.key
EOF
  )
  if [ $HAS_SYSTEMD = 1 ]; then
    systemctl enable -q etcd
    systemctl restart etcd || { journalctl -u etcd --no-pager -o cat | tail -20; exit 1; }
  else
    (set -a; . /etc/default/etcd; setsid etcd >>/var/log/etcd.log 2>&1 &)
  fi
  . "$ADMIN_ENV"
  i=0
  until etcdctl endpoint health >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -le 60 ] || { say "etcd does not answer after 60s"; exit 1; }
    sleep 1
  done
  # users and roles, then auth enable; a second provisioning finds auth on and changes nothing
  "$VENV/bin/python" -m minikubenet.store.etcd_rbac
  minikubenet network init --network "$NETWORK" --backend vxlan
fi

# -- 3. the CNI plugin and its configuration --------------------------------------------------
# /opt/cni/bin/minikubenet(-ipam) and /etc/cni/net.d/10-minikubenet.conflist; idempotent
"$VENV/bin/minikubenet" install --cni-version 1.0.0

# -- 4. the daemons -------------------------------------------------------------------------------
# each daemon its own etcd user: the certificate's CN (store/etcd_rbac.py)
cat > /etc/default/minikubenet-agent <<EOF
MINIKUBENET_ETCD_ENDPOINTS=$ETCD
MINIKUBENET_ETCD_CAFILE=$PKI/ca.crt
MINIKUBENET_ETCD_CERTFILE=$PKI/agent.crt
MINIKUBENET_ETCD_KEYFILE=$PKI/agent.key
MINIKUBENET_AGENT_ARGS=--public-ip $IP --node-name $NAME
EOF
cat > /etc/default/minikubenet-proxy <<EOF
MINIKUBENET_ETCD_ENDPOINTS=$ETCD
MINIKUBENET_ETCD_CAFILE=$PKI/ca.crt
MINIKUBENET_ETCD_CERTFILE=$PKI/proxy.crt
MINIKUBENET_ETCD_KEYFILE=$PKI/proxy.key
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
