#!/bin/sh
# Write a Mosquitto 2.x configuration for an edgeloop fleet into one folder:
#   mosquitto.conf   this folder's mosquitto.conf, paths pointing into --out
#   edgeloop.acl     this folder's edgeloop.acl (per-agent patterns; hub; one block per integrator)
#   passwd           Mosquitto password file (hashed) for the hub, every agent and every integrator
#   passwords/NAME   each account's password in clear (mode 0600): hand it to that device or user
#   ca.pem, ca.key   a CA made for this broker (keep ca.key off the broker host once done)
#   broker.pem/.key  the broker's certificate for --host (IP address or DNS name), signed by ca.pem
# Run it again with more --agent options to add agents: existing passwords and certificates are kept.
# Needs: openssl, mosquitto_passwd. Tested by tests/test_secure_broker.py; see docs/security.md.
#
# Example:
#   packaging/mosquitto/make-broker-config.sh --out /etc/mosquitto/edgeloop --host broker.lan \
#       --agent edge-1 --agent edge-2 --integrator plant-app
#   mosquitto -c /etc/mosquitto/edgeloop/mosquitto.conf
set -eu

usage() {
    cat <<'USAGE'
usage: make-broker-config.sh --out DIR --host HOST [--agent ID ...] [--integrator NAME ...]
                             [--hub NAME] [--root ROOT] [--port N] [--bind ADDR] [--data DIR] [--days N]
  --out DIR          folder to write (created 0700)
  --host HOST        name or IP address clients use to reach the broker (goes into its certificate)
  --agent ID         an agent id (its broker user name); repeat for each agent
  --integrator NAME  an account that may send inference requests and read its own replies; repeatable
  --hub NAME         the hub's user name (default hub)
  --root ROOT        the fleet's topic root (default edgeloop/v1)
  --port N           TLS listener port (default 8883); --bind ADDR: listen on ADDR only
  --data DIR         Mosquitto's persistence folder (default /var/lib/mosquitto)
  --days N           validity of the broker certificate (default 825)
USAGE
    exit "$1"
}

die() { echo "make-broker-config.sh: $*" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
out="" host="" hub="hub" root="edgeloop/v1" port=8883 bind="" data=/var/lib/mosquitto days=825
agents="" integrators=""
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=${2:?}; shift 2 ;;
        --host) host=${2:?}; shift 2 ;;
        --agent) agents="$agents ${2:?}"; shift 2 ;;
        --integrator) integrators="$integrators ${2:?}"; shift 2 ;;
        --hub) hub=${2:?}; shift 2 ;;
        --root) root=${2:?}; shift 2 ;;
        --port) port=${2:?}; shift 2 ;;
        --bind) bind=${2:?}; shift 2 ;;
        --data) data=${2:?}; shift 2 ;;
        --days) days=${2:?}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "make-broker-config.sh: unknown option $1" >&2; usage 2 ;;
    esac
done
[ -n "$out" ] || die "--out DIR is required"
[ -n "$host" ] || die "--host HOST is required (the name or IP address clients connect to)"
command -v openssl >/dev/null || die "openssl is not installed (Debian/Ubuntu: apt-get install openssl)"
command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd is not installed (apt-get install mosquitto)"

# Names become topic levels and ACL lines: the agent id rule of edgeloop (agent/wire/topics.py).
for name in $hub $agents $integrators; do
    echo "$name" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9_.-]{0,63}' ||
        die "name '$name' is not allowed: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
done
echo "$root" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*){0,2}' ||
    die "topic root '$root' is not allowed: 1-3 levels of letters, digits, '_', '-' or '.'"
for name in $hub $integrators; do
    for a in $agents; do
        [ "$name" != "$a" ] || die "'$name' is both an agent and the hub or an integrator: give it another name"
    done
done

umask 077
mkdir -p "$out/passwords"
out=$(cd "$out" && pwd)

# --- mosquitto.conf -----------------------------------------------------------------------------
listen="listener $port"
[ -z "$bind" ] || listen="listener $port $bind"
sed -e "s#/etc/mosquitto/edgeloop#$out#g" -e "s#^listener 8883\$#$listen#" \
    -e "s#^persistence_location .*#persistence_location $data/#" "$here/mosquitto.conf" >"$out/mosquitto.conf"

# --- edgeloop.acl: agents and hub as shipped, then one block per integrator --------------------------
acl="$out/edgeloop.acl.new"
sed -n '1,/^# --- integrators/p' "$here/edgeloop.acl" | sed -e "s/^user hub\$/user $hub/" >"$acl"
for name in $integrators; do
    sed -n '/^user plant-app$/,/^$/p' "$here/edgeloop.acl" | sed -e "s/plant-app/$name/g" >>"$acl"
    echo >>"$acl"
done
[ "$root" = "edgeloop/v1" ] || sed -i "s# edgeloop/v1/# $root/#g" "$acl"
mv "$acl" "$out/edgeloop.acl"

# --- passwords: kept when they exist, else random; the password file is hashed by mosquitto_passwd -U ----
plain="$out/passwd.new"
: >"$plain"
for name in $hub $agents $integrators; do
    [ -s "$out/passwords/$name" ] || openssl rand -base64 24 >"$out/passwords/$name"
    printf '%s:%s\n' "$name" "$(head -n 1 "$out/passwords/$name")" >>"$plain"
done
mosquitto_passwd -U "$plain" >/dev/null
mv "$plain" "$out/passwd"

# --- TLS: a CA of this broker and the broker's certificate -----------------------------------------
if [ ! -s "$out/ca.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=edgeloop broker CA" -keyout "$out/ca.key" -out "$out/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        2>/dev/null
fi
if [ ! -s "$out/broker.pem" ]; then
    case $host in
        *[!0-9.]*) case $host in *:*) san="IP:$host" ;; *) san="DNS:$host" ;; esac ;;
        *) san="IP:$host" ;;
    esac
    ext="$out/broker.ext"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" \
        "subjectAltName=$san" >"$ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
        -keyout "$out/broker.key" -out "$out/broker.csr" 2>/dev/null
    openssl x509 -req -in "$out/broker.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial \
        -days "$days" -extfile "$ext" -out "$out/broker.pem" 2>/dev/null
    rm -f "$out/broker.csr" "$ext" "$out/ca.srl"
fi
chmod 0644 "$out/ca.pem" "$out/broker.pem"

echo "wrote $out: mosquitto.conf, edgeloop.acl, passwd, passwords/, ca.pem, broker.pem"
echo "next: let the mosquitto user read $out (chown -R mosquitto: $out on Debian), move ca.key off this"
echo "host, give each agent ca.pem and passwords/<its id> (edgeloop-agent init --broker mqtts://ID@$host:$port"
echo "--password-file FILE --ca-file ca.pem), then: mosquitto -c $out/mosquitto.conf"
