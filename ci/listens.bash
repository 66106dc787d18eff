# Sourced by the ci/*-server scripts.
#
# listens PID PORT: whether process PID itself listens on 127.0.0.1:PORT. A port found free
# can be taken by another server (one started beside this one by the same test process)
# before the server meant for it binds it; that one answers HTTP too, so an answer alone does
# not say the server is up.
listens() {
    local pid=$1 port=$2 inode fd
    for inode in $(awk -v port="$(printf '0100007F:%04X' "$port")" \
        '$2 == port && $4 == "0A" { print $10 }' /proc/net/tcp); do
        for fd in /proc/"$pid"/fd/*; do
            if [[ $(readlink "$fd" 2>/dev/null) == "socket:[$inode]" ]]; then
                return 0
            fi
        done
    done
    return 1
}
