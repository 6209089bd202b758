# Sourced by run.sh and callgrind.sh: the nginx the bench compares with, configured the usual way
# for WebSockets, written in one place so that the throughput runs and the instruction counts
# measure the same nginx.
#
# nginx_conf DIR MASTER LISTEN BACKEND [EXTRA] > nginx.conf
#   DIR     the prefix: pid, error log and temp paths go under it
#   MASTER  on (run.sh: master + one worker, as deployed) or off (callgrind.sh: the worker
#           alone, so that valgrind sees it)
#   LISTEN  the listen directive, e.g. "listen 127.0.0.1:8080;" (with its ssl settings)
#   BACKEND host:port of the echo backend
#   EXTRA   more location directives (the 64 KiB buffers)
nginx_conf() {
    local dir=$1 master=$2 listen=$3 backend=$4 extra=${5:-}
    cat <<NGINX_CONF
daemon off;
master_process $master;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        $listen
        location / {
            proxy_pass http://$backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            $extra
        }
    }
}
NGINX_CONF
}
