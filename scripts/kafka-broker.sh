#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) for integration
# tests and CI, bound to loopback only.
#
#   scripts/kafka-broker.sh start  [DIR]   start (or reuse) a broker, print DIR/broker.env
#   scripts/kafka-broker.sh stop   [DIR]   SIGTERM, wait, then SIGKILL
#   scripts/kafka-broker.sh status [DIR]   exit 0 if running and healthy, 3 if not
#   scripts/kafka-broker.sh run-class MAIN [ARGS...]
#                                          a Kafka CLI class on the broker's classpath, e.g.
#                                          run-class org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:PORT --list
#
# DIR defaults to <repo>/target/kafka-test. `start` prints only the env file's
# path on stdout (progress goes to stderr), so `ENV=$(scripts/kafka-broker.sh start)`
# works. The broker is fetched from Maven Central (scripts/kafka/pom.xml)
# because CI can reach package registries and nothing else; no Docker either.
#
# Tunables (environment): KAFKA_LIBS_DIR (jar cache, default <repo>/target/kafka-libs),
# KAFKA_START_TIMEOUT (seconds, default 120), KAFKA_HEAP_OPTS (default
# -Xms256m -Xmx512m), JAVA_HOME (Java 17+; else `java` from PATH).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
KAFKA_CONF_DIR="$SCRIPT_DIR/kafka"
POM="$KAFKA_CONF_DIR/pom.xml"
LOG4J_CONF="$KAFKA_CONF_DIR/log4j2.properties"
LIBS_DIR="${KAFKA_LIBS_DIR:-$REPO_ROOT/target/kafka-libs}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"

# Test-only secrets: these are meant to be known.
STORE_PASSWORD=changeit
TRUST_ALIAS=OSSStream
SASL_USER=alice
SASL_PASSWORD=alice-secret
ADMIN_USER="admin"
ADMIN_PASSWORD=admin-secret
# A topic that only the admin user may use: the tests' user gets a real
# TOPIC_AUTHORIZATION_FAILED from it (see write_server_properties).
ACL_DENIED_TOPIC=acl-denied

# Main classes for Kafka 4.4 (they moved between 3.x and 4.x; re-check on bumps).
BROKER_MAIN=kafka.Kafka
STORAGE_MAIN=kafka.tools.StorageTool

log() { echo "kafka-broker.sh: $*" >&2; }
# Seconds since $T0 with one decimal (bash 5's EPOCHREALTIME, no forks).
since() {
    local now=${EPOCHREALTIME/[.,]/} start=${T0/[.,]/}
    local ms=$(((now - start) / 1000))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
die() { echo "kafka-broker.sh: error: $*" >&2; exit 1; }

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# ---------------------------------------------------------------- prerequisites

find_java() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        JAVA="$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        JAVA=$(command -v java)
    else
        die "java not found (set JAVA_HOME or put Java 17+ on PATH)"
    fi
    local spec
    spec=$("$JAVA" -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = //p')
    # Kafka 4 brokers refuse to run on anything older than Java 17.
    if [[ -z "$spec" || "${spec%%.*}" -lt 17 ]]; then
        die "Kafka 4 needs Java 17+, but $JAVA is version '${spec:-unknown}' (set JAVA_HOME)"
    fi
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not on PATH${2:+ ($2)}"
}

# Fetch the broker jars once. The cache is keyed by the pom's hash so editing
# the pom (e.g. a version bump) refetches; a half-finished fetch never counts
# because the stamp is written last.
ensure_libs() {
    local want stamp="$LIBS_DIR/.pom-sha256"
    want=$(sha256sum "$POM" | cut -d' ' -f1)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    need mvn "used to fetch Kafka from Maven Central"
    mkdir -p "$(dirname "$LIBS_DIR")"
    # Two DIRs may start at once; only one of them should fetch.
    exec 8>"$LIBS_DIR.lock"
    flock -w 900 8 || die "timed out waiting for another Kafka jar fetch ($LIBS_DIR.lock)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        exec 8>&-
        return
    fi
    log "fetching Kafka jars from Maven Central into $LIBS_DIR (first run only; ~1 min on an empty ~/.m2) ..."
    local tmp="$LIBS_DIR.tmp" mvn_log="$LIBS_DIR.mvn.log"
    rm -rf "$tmp"
    # Output goes to a file: even with -q, Debian's Maven prints stray ANSI
    # escapes, and the output only matters when it fails.
    if ! mvn -B -q -f "$POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$mvn_log" 2>&1; then
        tail -n 40 "$mvn_log" >&2
        die "mvn could not fetch the Kafka jars (output above, full log: $mvn_log; is Maven Central reachable?)"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "mvn finished but no kafka_2.13 jar in $tmp"
    rm -rf "$LIBS_DIR"
    mv "$tmp" "$LIBS_DIR"
    echo "$want" >"$stamp"
    exec 8>&-
}

# run_tool TIMEOUT_SECONDS MAIN_CLASS ARGS...: one of Kafka's CLI tools in a
# JVM, quietly (only warnings are logged), killed if it hangs.
run_tool() {
    local secs=$1
    shift
    timeout "$secs" "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J_CONF" -Dharness.log.level=WARN \
        -cp "$LIBS_DIR/*" "$@"
}

# ------------------------------------------------------------------ state files

set_paths() {
    DIR=$1
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    TLS_DIR="$DIR/tls"
    DATA_DIR="$DIR/data"
    PID_FILE="$DIR/broker.pid"
    ENV_FILE="$DIR/broker.env"
    LOG_FILE="$DIR/broker.log"
    GC_LOG="$DIR/gc.log"
    PROPS="$DIR/server.properties"
}

# Start/stop of one DIR must not interleave: parallel test binaries all call
# `start`, and only the first one should actually launch a broker.
lock_dir() {
    exec 9>"$DIR/.lock"
    flock -w $((START_TIMEOUT + 300)) 9 || die "timed out waiting for the lock on $DIR/.lock"
}

# The pid of this DIR's broker if that process is alive and really is it
# (pids get reused, e.g. after a reboot with target/ kept), else nothing.
broker_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
        grep -qF -- "-Dkafka.test.dir=$DIR " || return 1
    echo "$pid"
}

port_open() {
    # bash's /dev/tcp: no nc needed. The subshell closes the socket at once.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

env_ports() {
    [[ -f "$ENV_FILE" ]] || return 1
    sed -n 's/^KAFKA_\(PLAINTEXT\|SASL_SSL\|SSL\|SASL_PLAINTEXT\|CONTROLLER\)=.*:\([0-9]\+\)$/\2/p' "$ENV_FILE"
}

# Cheap health check (no JVM): our process is alive, the env file from its
# successful start exists, and every listener accepts TCP connections.
healthy() {
    broker_pid >/dev/null || return 1
    local ports port
    ports=$(env_ports) || return 1
    [[ -n "$ports" ]] || return 1
    for port in $ports; do
        port_open "$port" || return 1
    done
}

# ------------------------------------------------------------------------ ports

# Five free loopback ports. Chosen below the kernel's ephemeral range so an
# outgoing connection can't grab one between now and the broker's bind().
pick_ports() {
    need python3 "used to pick free ports"
    python3 - <<'EOF'
import random, socket
lo, _hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
low, high = 20000, min(lo, 32768) - 1
if high - low < 1000:
    low, high = 1024, 65535
chosen = []
while len(chosen) < 5:
    port = random.randint(low, high)
    if port in chosen:
        continue
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    chosen.append(port)
print(*chosen)
EOF
}

# ------------------------------------------------------------------------- TLS

# Everything is regenerated on each start so nothing can expire or drift.
# Explicit -config files keep the output independent of the system openssl.cnf.
gen_tls() {
    need openssl
    need keytool "part of the JDK"
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        cat >ca.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = connectivity-agent test CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
EOF
        sed 's/test CA/unrelated test CA/' ca.cnf >other-ca.cnf
        cat >leaf.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
        openssl req -x509 -new -config ca.cnf -newkey rsa:2048 -nodes -sha256 -days 3650 \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -x509 -new -config other-ca.cnf -newkey rsa:2048 -nodes -sha256 -days 3650 \
            -keyout other-ca.key -out other-ca.pem 2>/dev/null

        # Broker certificate: clients verify the hostname, so it must name
        # both spellings they might dial (localhost / 127.0.0.1).
        openssl req -new -config leaf.cnf -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout broker.key -out broker.csr 2>/dev/null
        openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -sha256 -days 825 -extfile leaf.cnf -extensions server -out broker.pem 2>/dev/null
        openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem \
            -name broker -passout "pass:$STORE_PASSWORD" -out broker.p12

        # Client certificate for mTLS tests (the SSL listener requests one).
        openssl req -new -config leaf.cnf -newkey rsa:2048 -nodes -subj "/CN=connectivity-agent-test-client" \
            -keyout client.key -out client.csr 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -sha256 -days 825 -extfile leaf.cnf -extensions client -out client.pem 2>/dev/null
        rm -f ./*.csr ./*.cnf ./*.srl
    )
}

# Only tests read the truststores, not the broker, and these are three JVM
# launches (~3-4 s), so cmd_start runs this in the background while the
# storage is formatted and the broker boots.
gen_truststores() {
    (
        cd "$TLS_DIR"
        # The truststore formats users bring. keytool, not openssl, for the
        # PKCS#12 one: Java only treats a PKCS#12 cert as trusted if it carries
        # Oracle's trusted-key-usage attribute, which openssl does not write.
        keytool -importcert -noprompt -alias "$TRUST_ALIAS" -file ca.pem \
            -keystore truststore.jks -storetype JKS -storepass "$STORE_PASSWORD" >/dev/null 2>&1 ||
            die "keytool could not create truststore.jks"
        keytool -importcert -noprompt -alias "$TRUST_ALIAS" -file ca.pem \
            -keystore truststore.p12 -storetype PKCS12 -storepass "$STORE_PASSWORD" >/dev/null 2>&1 ||
            die "keytool could not create truststore.p12"
        # keytool refuses store passwords under 6 characters, so the
        # empty-password JKS comes from the KeyStore API via Java's
        # single-file source launcher. Optional: skipped if it fails.
        if ! "$JAVA" "$KAFKA_CONF_DIR/MakeNoPassJks.java" ca.pem truststore-nopass.jks "$TRUST_ALIAS" >/dev/null 2>&1; then
            rm -f truststore-nopass.jks
            log "warning: could not create truststore-nopass.jks (needs a full JDK); skipping it"
        fi
    )
}

# ---------------------------------------------------------------------- config

write_server_properties() {
    local jaas_plain="org.apache.kafka.common.security.plain.PlainLoginModule required username=\"$ADMIN_USER\" password=\"$ADMIN_PASSWORD\" user_$ADMIN_USER=\"$ADMIN_PASSWORD\" user_$SASL_USER=\"$SASL_PASSWORD\";"
    local jaas_scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
    cat >"$PROPS" <<EOF
# Generated by scripts/kafka-broker.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$P_CONTROLLER
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT

# Everything on loopback. The TLS listeners advertise "localhost" because that
# is the name in the broker certificate (which also has IP:127.0.0.1).
listeners=PLAINTEXT://127.0.0.1:$P_PLAINTEXT,SASL_SSL://127.0.0.1:$P_SASL_SSL,SSL://127.0.0.1:$P_SSL,SASL_PLAINTEXT://127.0.0.1:$P_SASL_PLAINTEXT,CONTROLLER://127.0.0.1:$P_CONTROLLER
advertised.listeners=PLAINTEXT://127.0.0.1:$P_PLAINTEXT,SASL_SSL://localhost:$P_SASL_SSL,SSL://localhost:$P_SSL,SASL_PLAINTEXT://127.0.0.1:$P_SASL_PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT

ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.key.password=$STORE_PASSWORD
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
# Client certs are optional on the SSL listener (mTLS tests can present
# client.pem; everyone else connects without one) and unused elsewhere.
ssl.client.auth=none
listener.name.ssl.ssl.client.auth=requested

# SASL: PLAIN users are defined inline; SCRAM credentials were written into
# the metadata log by "kafka-storage format --add-scram".
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=$jaas_plain
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$jaas_scram
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$jaas_scram
listener.name.sasl_plaintext.plain.sasl.jaas.config=$jaas_plain
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=$jaas_scram
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$jaas_scram

# An authorizer, so that a refused ACL is a real broker's answer. A resource
# without ACLs stays open to everyone, so the tests' users need none; the one
# ACL (added once the broker is up) gives $ACL_DENIED_TOPIC to the admin user
# alone. Loopback PLAINTEXT, the controller and the admin are super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=true
super.users=User:ANONYMOUS;User:$ADMIN_USER

log.dirs=$DATA_DIR

# Single node, fast tests: RF 1 everywhere, few partitions for internal
# topics (their creation dominates the first consumer-group join), no
# initial rebalance delay, short session timeouts allowed.
num.partitions=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=4
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=1000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000

# Small footprint on a 2-core CI machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.segment.bytes=16777216
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.threads=1
EOF
}

# The ACL that makes $ACL_DENIED_TOPIC the admin's alone (see the authorizer
# settings above): any other user is refused, as by a real cluster's ACLs.
add_acls() {
    local out
    if ! out=$(run_tool 120 org.apache.kafka.tools.AclCommand \
        --bootstrap-server "127.0.0.1:$P_PLAINTEXT" --add \
        --allow-principal "User:$ADMIN_USER" --operation All --topic "$ACL_DENIED_TOPIC" 2>&1); then
        start_failed "adding the ACL of topic $ACL_DENIED_TOPIC failed: $out"
    fi
}

# Kafka cluster ids are 16 random bytes, URL-safe base64 without padding;
# Kafka itself never hands out ids starting with '-' (they look like flags).
new_cluster_id() {
    python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

write_env() {
    local tmp="$ENV_FILE.tmp"
    {
        echo "# Written by scripts/kafka-broker.sh once the broker answered; paths are absolute."
        echo "KAFKA_PLAINTEXT=127.0.0.1:$P_PLAINTEXT"
        echo "KAFKA_SASL_SSL=localhost:$P_SASL_SSL"
        echo "KAFKA_SSL=localhost:$P_SSL"
        echo "KAFKA_SASL_PLAINTEXT=127.0.0.1:$P_SASL_PLAINTEXT"
        echo "KAFKA_CONTROLLER=127.0.0.1:$P_CONTROLLER"
        echo "KAFKA_CA_PEM=$TLS_DIR/ca.pem"
        echo "KAFKA_OTHER_CA_PEM=$TLS_DIR/other-ca.pem"
        echo "KAFKA_TRUSTSTORE_JKS=$TLS_DIR/truststore.jks"
        if [[ -f "$TLS_DIR/truststore-nopass.jks" ]]; then
            echo "KAFKA_TRUSTSTORE_JKS_NOPASS=$TLS_DIR/truststore-nopass.jks"
        fi
        echo "KAFKA_TRUSTSTORE_P12=$TLS_DIR/truststore.p12"
        echo "KAFKA_TRUSTSTORE_PASSWORD=$STORE_PASSWORD"
        echo "KAFKA_TRUSTSTORE_ALIAS=$TRUST_ALIAS"
        echo "KAFKA_CLIENT_CERT=$TLS_DIR/client.pem"
        echo "KAFKA_CLIENT_KEY=$TLS_DIR/client.key"
        echo "KAFKA_SASL_USER=$SASL_USER"
        echo "KAFKA_SASL_PASSWORD=$SASL_PASSWORD"
        echo "KAFKA_SASL_ADMIN_USER=$ADMIN_USER"
        echo "KAFKA_SASL_ADMIN_PASSWORD=$ADMIN_PASSWORD"
        echo "KAFKA_CLUSTER_ID=$CLUSTER_ID"
        echo "KAFKA_ACL_DENIED_TOPIC=$ACL_DENIED_TOPIC"
        echo "KAFKA_LIBS_DIR=$LIBS_DIR"
        echo "KAFKA_BROKER_PID=$BROKER_PID"
        echo "KAFKA_BROKER_LOG=$LOG_FILE"
        echo "KAFKA_GC_LOG=$GC_LOG"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
}

# ---------------------------------------------------------------------- commands

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    # A combined broker+controller shuts down cleanly in a few seconds.
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "broker (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    die "could not kill broker pid $pid"
}

start_failed() {
    log "$1"
    if [[ -f "$LOG_FILE" ]]; then
        log "last lines of $LOG_FILE:"
        tail -n 60 "$LOG_FILE" >&2
    fi
    if [[ -n "${BROKER_PID:-}" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        stop_pid "$BROKER_PID" || true
    fi
    rm -f "$PID_FILE" "$ENV_FILE"
    exit 1
}

cmd_start() {
    lock_dir
    if healthy; then
        echo "$ENV_FILE"
        return
    fi
    local stale
    if stale=$(broker_pid); then
        log "broker pid $stale is up but not healthy; restarting it"
        stop_pid "$stale"
    fi
    rm -f "$PID_FILE" "$ENV_FILE"

    find_java
    need python3 "used to pick ports and make a cluster id"
    T0=$EPOCHREALTIME
    ensure_libs

    read -r P_PLAINTEXT P_SASL_SSL P_SSL P_SASL_PLAINTEXT P_CONTROLLER < <(pick_ports)
    [[ -n "${P_CONTROLLER:-}" ]] || die "could not pick free ports"
    CLUSTER_ID=$(new_cluster_id)

    log "generating TLS material in $TLS_DIR"
    gen_tls
    gen_truststores &
    local truststores_pid=$!
    # Fresh storage every start: tests get a clean, deterministic cluster.
    rm -rf "$DATA_DIR"
    write_server_properties

    log "formatting KRaft storage (cluster id $CLUSTER_ID) [$(since)s]"
    local fmt_out
    if ! fmt_out=$(run_tool 120 "$STORAGE_MAIN" format \
        --cluster-id "$CLUSTER_ID" --config "$PROPS" \
        --add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$SASL_PASSWORD]" \
        --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]" \
        --add-scram "SCRAM-SHA-256=[name=$ADMIN_USER,password=$ADMIN_PASSWORD]" \
        --add-scram "SCRAM-SHA-512=[name=$ADMIN_USER,password=$ADMIN_PASSWORD]" 2>&1); then
        die "kafka storage format failed: $fmt_out"
    fi

    log "starting broker (log: $LOG_FILE) [$(since)s]"
    : >"$LOG_FILE"
    # setsid: a Ctrl-C on `cargo test` must not take the shared broker down.
    # fds 8/9 (our flock locks) are closed so the broker doesn't hold the lock
    # forever; stdin/stdout/stderr are detached so a caller that captures our
    # output (e.g. Rust's Command::output) isn't kept waiting for EOF.
    # -Dkafka.test.dir tags the process so stop/status never kill a stranger.
    # shellcheck disable=SC2086
    (
        cd "$DIR"
        exec 8>&- 9>&-
        # The GC log (pauses, stamped with the wall clock in ms) lets the
        # benchmark tell the broker's pauses from the relay's in a latency tail.
        exec setsid "$JAVA" $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            "-Xlog:gc:file=$GC_LOG:timemillis:filecount=2,filesize=8m" \
            -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$LOG4J_CONF" \
            -Dkafka.test.dir="$DIR" \
            -cp "$LIBS_DIR/*" "$BROKER_MAIN" "$PROPS" \
            </dev/null >>"$LOG_FILE" 2>&1
    ) &
    BROKER_PID=$!
    echo "$BROKER_PID" >"$PID_FILE"

    # Readiness: every listener accepts TCP, then a real Metadata round trip
    # over PLAINTEXT lists the broker (see scripts/kafka/metadata_probe.py for
    # why that means ready). Polled, with an overall deadline.
    local deadline=$((SECONDS + START_TIMEOUT)) port all_open out=""
    while :; do
        kill -0 "$BROKER_PID" 2>/dev/null || start_failed "broker process exited during startup"
        ((SECONDS < deadline)) || start_failed "broker not ready after ${START_TIMEOUT}s${out:+; last probe said: $out}"
        all_open=1
        for port in $P_PLAINTEXT $P_SASL_SSL $P_SSL $P_SASL_PLAINTEXT $P_CONTROLLER; do
            port_open "$port" || { all_open=0; break; }
        done
        if ((all_open)) &&
            out=$(timeout 10 python3 "$KAFKA_CONF_DIR/metadata_probe.py" 127.0.0.1 "$P_PLAINTEXT" 2>&1); then
            break
        fi
        sleep 0.2
    done
    wait "$truststores_pid" || start_failed "creating the truststores failed"
    add_acls
    write_env
    log "broker ready in $(since)s: PLAINTEXT=127.0.0.1:$P_PLAINTEXT SASL_SSL=localhost:$P_SASL_SSL SSL=localhost:$P_SSL SASL_PLAINTEXT=127.0.0.1:$P_SASL_PLAINTEXT"
    echo "$ENV_FILE"
}

cmd_stop() {
    lock_dir
    local pid
    if pid=$(broker_pid); then
        log "stopping broker pid $pid"
        stop_pid "$pid"
    else
        log "no broker running for $DIR"
    fi
    rm -f "$PID_FILE" "$ENV_FILE"
}

cmd_status() {
    local pid
    if healthy; then
        pid=$(broker_pid)
        echo "running (pid $pid); env: $ENV_FILE"
    elif pid=$(broker_pid); then
        echo "process $pid is up but listeners are not (all) accepting"
        exit 1
    else
        echo "not running"
        exit 3
    fi
}

cmd_run_class() {
    [[ $# -ge 1 ]] || usage
    find_java
    ensure_libs
    exec "$JAVA" -Dlog4j2.configurationFile="$LOG4J_CONF" -Dharness.log.level=WARN \
        -cp "$LIBS_DIR/*" "$@"
}

case "${1:-}" in
start | stop | status)
    cmd=$1
    set_paths "${2:-$REPO_ROOT/target/kafka-test}"
    "cmd_$cmd"
    ;;
run-class)
    shift
    cmd_run_class "$@"
    ;;
-h | --help | help) usage 0 ;;
*) usage ;;
esac
