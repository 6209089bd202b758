#!/usr/bin/env bash
# Make a local development CA and a localhost server certificate signed by it,
# for trying wsgate over TLS (wss://). Not for production use.
#
# Usage: certs/make-dev-certs.sh [output-dir]   (default: the directory of this script)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="${1:-$script_dir}"
mkdir -p "$out_dir"
cd "$out_dir"

command -v openssl >/dev/null 2>&1 || { echo "error: openssl not found in PATH" >&2; exit 1; }

umask 077
tmp_dir="$(mktemp -d)"
trap 'rm -rf "$tmp_dir"' EXIT

new_ec_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
  chmod 600 "$1"
}

# --- Development CA (kept if it already exists) ------------------------------
if [[ -f dev-ca.key && -f dev-ca.crt ]]; then
  echo "Using existing CA: $out_dir/dev-ca.crt"
else
  echo "Creating development CA: $out_dir/dev-ca.crt"
  new_ec_key dev-ca.key
  cat >"$tmp_dir/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = wsgate development CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
  openssl req -new -x509 -sha256 -days 3650 -key dev-ca.key \
    -config "$tmp_dir/ca.cnf" -out dev-ca.crt
  chmod 644 dev-ca.crt
fi

# --- Server certificate for localhost ----------------------------------------
echo "Creating server certificate: $out_dir/localhost.crt"
new_ec_key localhost.key
cat >"$tmp_dir/server.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = localhost
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
openssl req -new -sha256 -key localhost.key -config "$tmp_dir/server.cnf" \
  -out "$tmp_dir/localhost.csr"
openssl x509 -req -sha256 -days 825 -in "$tmp_dir/localhost.csr" \
  -CA dev-ca.crt -CAkey dev-ca.key -CAcreateserial -CAserial "$tmp_dir/dev-ca.srl" \
  -extfile "$tmp_dir/server.cnf" -extensions v3_server -out localhost.crt
chmod 644 localhost.crt

openssl verify -CAfile dev-ca.crt localhost.crt >/dev/null

cat <<EOF

Done. Files in $out_dir:
  dev-ca.crt      development CA certificate (trust this one)
  dev-ca.key      development CA private key (keep private)
  localhost.crt   server certificate for localhost, 127.0.0.1 and ::1
  localhost.key   server private key

To trust the CA:
  Debian/Ubuntu:  sudo cp "$out_dir/dev-ca.crt" /usr/local/share/ca-certificates/wsgate-dev-ca.crt
                  sudo update-ca-certificates
  Browsers:       import dev-ca.crt as a trusted certificate authority
                  (Firefox: Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import)

wsgate configuration (paths are resolved against the config file's directory;
this assumes a config file in the repository root):
  listen:
    - address: 127.0.0.1:5443
      tls:
        certificates:
          - { cert: certs/localhost.crt, key: certs/localhost.key }
EOF
