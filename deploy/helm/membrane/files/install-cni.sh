#!/bin/sh
# Installs the membrane CNI plugin and network configuration on the node (init container
# install-cni). Idempotent; both files are replaced atomically (write aside, then rename).
#   PLUGIN_SRC   the plugin inside the image       (/opt/membrane/cni/membrane-cni)
#   CONF_SRC     the conflist from the ConfigMap   (/etc/membrane/config/05-membrane.conflist)
#   HOST_BIN_DIR the node's CNI plugin folder      (/host/opt/cni/bin)
#   HOST_CONF_DIR the node's CNI config folder     (/host/etc/cni/net.d)
#   CNI_EXCLUSIVE "true": rename other configs in HOST_CONF_DIR to *.membrane_bak
set -eu
PLUGIN_SRC=${PLUGIN_SRC:-/opt/membrane/cni/membrane-cni}
CONF_SRC=${CONF_SRC:-/etc/membrane/config/05-membrane.conflist}
HOST_BIN_DIR=${HOST_BIN_DIR:-/host/opt/cni/bin}
HOST_CONF_DIR=${HOST_CONF_DIR:-/host/etc/cni/net.d}
CNI_EXCLUSIVE=${CNI_EXCLUSIVE:-false}
# "false": the agent writes the conflist itself once it is ready (--write-cni-conf-when-ready).
INSTALL_CONF=${INSTALL_CONF:-true}

[ -f "$PLUGIN_SRC" ] || { echo "install-cni: $PLUGIN_SRC is missing from the image" >&2; exit 1; }
[ -f "$CONF_SRC" ] || { echo "install-cni: $CONF_SRC is missing" >&2; exit 1; }
mkdir -p "$HOST_BIN_DIR" "$HOST_CONF_DIR"

plugin=$HOST_BIN_DIR/membrane-cni
cp "$PLUGIN_SRC" "$plugin.tmp.$$"
chmod 0755 "$plugin.tmp.$$"
mv -f "$plugin.tmp.$$" "$plugin"
echo "install-cni: installed $plugin"

conf_name=$(basename "$CONF_SRC")
conf=$HOST_CONF_DIR/$conf_name
if [ "$INSTALL_CONF" = "true" ]; then
    cp "$CONF_SRC" "$HOST_CONF_DIR/.$conf_name.tmp.$$"
    chmod 0644 "$HOST_CONF_DIR/.$conf_name.tmp.$$"
    mv -f "$HOST_CONF_DIR/.$conf_name.tmp.$$" "$conf"
    echo "install-cni: wrote $conf"
fi

if [ "$CNI_EXCLUSIVE" = "true" ]; then
    for other in "$HOST_CONF_DIR"/*.conf "$HOST_CONF_DIR"/*.conflist "$HOST_CONF_DIR"/*.json; do
        [ -e "$other" ] || continue
        [ "$other" = "$conf" ] && continue
        mv -f "$other" "$other.membrane_bak"
        echo "install-cni: moved aside $other (exclusive mode)"
    done
fi
