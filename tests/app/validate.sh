#!/usr/bin/env bash
# Checks app.js against a throwaway redis-server: login writes the session the
# way the shared vectors say, logout deletes it, secret rotation keeps old
# cookies valid, and the process lifecycle (stdout line, SIGTERM, stdin close)
# holds. Everything it starts is stopped by PID. Exit 0 = all checks passed.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
VECTORS="${VECTORS:-/work/shared/vectors/sessions.json}"
WORK="$(mktemp -d)"
REDIS_PID=""
APP_PID=""
FAILS=0

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ok() { echo "ok   - $*"; }
bad() { echo "FAIL - $*"; FAILS=$((FAILS + 1)); }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got [$2] want [$3]"; fi; }

cleanup() {
  [ -n "$APP_PID" ] && kill "$APP_PID" 2>/dev/null || true
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
  exec 9>&- 2>/dev/null || true
  [ -n "${KEEP_LOGS:-}" ] && cp "$WORK/app.err" "$KEEP_LOGS" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --save "" --appendonly no --bind 127.0.0.1 >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
R() { redis-cli -p "$REDIS_PORT" --raw "$@"; }
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

# start_app ENV=... : starts the app with stdin on a FIFO we hold open (fd 9),
# waits for the stdout line, sets APP_PID and BASE.
start_app() {
  rm -f "$WORK/stdin" "$WORK/stdout"
  mkfifo "$WORK/stdin"
  env "$@" node "$HERE/app.js" <"$WORK/stdin" >"$WORK/stdout" 2>>"$WORK/app.err" &
  APP_PID=$!
  exec 9>"$WORK/stdin"
  for _ in $(seq 100); do [ -s "$WORK/stdout" ] && break; sleep 0.05; done
  LINE="$(head -n1 "$WORK/stdout")"
  PORT="$(echo "$LINE" | jq -r .port)"
  BASE="http://127.0.0.1:$PORT"
}
stop_app() {
  kill -TERM "$APP_PID"
  wait "$APP_PID" || true
  APP_PID=""
  exec 9>&-
}
sid_of() { # cookie jar file, cookie name -> session id
  awk -v n="$2" '$6==n {print $7}' "$1" | python3 -c 'import sys,urllib.parse; v=urllib.parse.unquote(sys.stdin.read().strip()); print(v[2:v.rindex(".")])'
}
# shape = the key structure of a session JSON (values of cookie fields kept
# only where they are constants), to compare with the vectors.
shape() { jq -c '{keys: keys, cookie: (.cookie|keys), httpOnly: .cookie.httpOnly, path: .cookie.path, passport_keys: ((.passport // {})|keys)}'; }
VEC_BASIC="$(jq -r '.cases[] | select(.name=="basic_single_secret_session_cookie") | .redis_value' "$VECTORS")"
VEC_MAXAGE="$(jq -r '.cases[] | select(.name=="max_age_one_hour_samesite_lax") | .redis_value' "$VECTORS" | jq -c 'del(.cookie.sameSite)')"

for MODE in id object; do
  echo "# SERIALIZE=$MODE"
  start_app SERIALIZE="$MODE" SESSION_SECRETS="keyboard cat"
  check "stdout line shape" "$(echo "$LINE" | jq -c 'keys')" '["event","port"]'
  check "stdout has one line" "$(wc -l <"$WORK/stdout")" "1"
  JAR="$WORK/jar-$MODE"
  BODY="$(curl -s -c "$JAR" -D "$WORK/h-$MODE" -d 'username=alice&password=alice-password' "$BASE/login")"
  check "login ok" "$(echo "$BODY" | jq -c '[.ok,.user.id,.user.password]')" '[true,"u-alice",null]'
  SID="$(sid_of "$JAR" connect.sid)"
  VAL="$(R GET "sess:$SID")"
  echo "     set-cookie: $(grep -i '^set-cookie' "$WORK/h-$MODE" | tr -d '\r')"
  echo "     redis sess:$SID = $VAL  TTL $(R TTL "sess:$SID")"
  check "session shape matches vector" "$(echo "$VAL" | shape)" "$(echo "$VEC_BASIC" | shape)"
  if [ "$MODE" = id ]; then
    check "passport.user is the id" "$(echo "$VAL" | jq -c .passport.user)" '"u-alice"'
  else
    check "passport.user is the object" "$(echo "$VAL" | jq -c .passport.user)" \
      '{"id":"u-alice","username":"alice","role":"admin","displayName":"Alice Liddell"}'
  fi
  check "TTL 86400" "$(R TTL "sess:$SID")" "86400"
  check "/me 200" "$(curl -s -o /dev/null -w '%{http_code}' -b "$JAR" "$BASE/me")" "200"
  check "/me user" "$(curl -s -b "$JAR" "$BASE/me" | jq -r .user.username)" "alice"
  check "/me anonymous 401" "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/me")" "401"
  check "bad password 401" "$(curl -s -o /dev/null -w '%{http_code}' -d 'username=alice&password=x' "$BASE/login")" "401"

  R EXPIRE "sess:$SID" 100 >/dev/null
  curl -s -b "$JAR" -X POST "$BASE/touch" >/dev/null
  check "/touch re-saves (TTL back to 86400)" "$(R TTL "sess:$SID")" "86400"
  check "/touch wrote touchedAt" "$(R GET "sess:$SID" | jq -r '.touchedAt|type')" "number"

  # JSON body and the numeric id
  JAR7="$WORK/jar7-$MODE"
  curl -s -c "$JAR7" -H 'content-type: application/json' -d '{"username":"carol","password":"carol-password"}' "$BASE/login" >/dev/null
  SID7="$(sid_of "$JAR7" connect.sid)"
  echo "     redis sess:$SID7 = $(R GET "sess:$SID7")"
  check "numeric id stays a number" "$(R GET "sess:$SID7" | jq -r '.passport.user | (if type == "object" then .id else . end) | type')" "number"

  # logout: key deleted
  LOGOUT_H="$(curl -s -D - -o /dev/null -b "$JAR" -X POST "$BASE/logout" | tr -d '\r')"
  check "logout deletes key" "$(R EXISTS "sess:$SID")" "0"
  check "old cookie 401 after logout" "$(curl -s -o /dev/null -w '%{http_code}' -b "$JAR" "$BASE/me")" "401"
  echo "     logout set-cookie: $(echo "$LOGOUT_H" | grep -i '^set-cookie' || echo none)"
  check "no new session key after logout" "$(R --scan --pattern 'sess:*' | grep -vc -e "$SID7" || true)" "0"

  # logout-keep-session: same key, passport:{}
  curl -s -b "$JAR7" -X POST "$BASE/logout-keep-session" >/dev/null
  KEPT="$(R GET "sess:$SID7")"
  echo "     after /logout-keep-session sess:$SID7 = $KEPT TTL $(R TTL "sess:$SID7")"
  check "keep-session: key kept, passport empty" "$(echo "$KEPT" | jq -c .passport)" '{}'
  check "keep-session: /me 401" "$(curl -s -o /dev/null -w '%{http_code}' -b "$JAR7" "$BASE/me")" "401"

  # logout-regenerate: old key gone, new anonymous session
  JARB="$WORK/jarb-$MODE"
  curl -s -c "$JARB" -d 'username=bob&password=bob-password' "$BASE/login" >/dev/null
  SIDB="$(sid_of "$JARB" connect.sid)"
  curl -s -b "$JARB" -c "$JARB" -X POST "$BASE/logout-regenerate" >/dev/null
  SIDN="$(sid_of "$JARB" connect.sid)"
  check "regenerate: old key gone" "$(R EXISTS "sess:$SIDB")" "0"
  echo "     after /logout-regenerate new sess:$SIDN = $(R GET "sess:$SIDN") TTL $(R TTL "sess:$SIDN")"
  check "regenerate: new key has no passport" "$(R GET "sess:$SIDN" | jq -c 'has("passport")')" "false"

  # users
  ANON="$WORK/jar-anon-$MODE"
  curl -s -c "$ANON" "$BASE/visit" >/dev/null
  echo "     after /visit sess:$(sid_of "$ANON" connect.sid) = $(R GET "sess:$(sid_of "$ANON" connect.sid)")"
  check "/visit saves an anonymous session" "$(R GET "sess:$(sid_of "$ANON" connect.sid)" | jq -c '[has("passport"), .returnTo]')" '[false,"/dashboard"]'
  check "keep-session anonymous 401" "$(curl -s -o /dev/null -w '%{http_code}' -b "$ANON" -X POST "$BASE/logout-keep-session")" "401"
  check "GET /users/u-bob" "$(curl -s "$BASE/users/u-bob" | jq -c '[.id,.role,.password]')" '["u-bob","user",null]'
  check "GET /users/7" "$(curl -s "$BASE/users/7" | jq -c '.id')" '7'
  check "GET /users/nope 404" "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/users/nope")" "404"
  check "redis user:7" "$(R GET user:7)" '{"id":7,"username":"carol","role":"user","displayName":"Carol Numeric"}'
  stop_app
  R FLUSHALL >/dev/null
done

echo "# custom cookie name, prefix, maxAge"
start_app SESSION_COOKIE=app.sid SESSION_PREFIX=myapp:sess: SESSION_MAX_AGE_MS=3600000
JAR="$WORK/jar-custom"
curl -s -c "$JAR" -D "$WORK/h-custom" -d 'username=alice&password=alice-password' "$BASE/login" >/dev/null
SID="$(sid_of "$JAR" app.sid)"
VAL="$(R GET "myapp:sess:$SID")"
echo "     set-cookie: $(grep -i '^set-cookie' "$WORK/h-custom" | tr -d '\r')"
echo "     redis myapp:sess:$SID = $VAL TTL $(R TTL "myapp:sess:$SID")"
check "maxAge session shape matches vector" "$(echo "$VAL" | shape)" "$(echo "$VEC_MAXAGE" | shape)"
check "maxAge TTL 3600" "$(R TTL "myapp:sess:$SID")" "3600"
stop_app
R FLUSHALL >/dev/null

echo "# rotation"
start_app SESSION_SECRETS=old-secret
JAR="$WORK/jar-old"
curl -s -c "$JAR" -d 'username=alice&password=alice-password' "$BASE/login" >/dev/null
stop_app
start_app SESSION_SECRETS=new-secret,old-secret
H="$(curl -s -D - -o "$WORK/me-old" -b "$JAR" "$BASE/me" | tr -d '\r')"
check "old-secret cookie accepted after rotation" "$(jq -r .user.username "$WORK/me-old")" "alice"
check "no re-signing Set-Cookie" "$(echo "$H" | grep -ci '^set-cookie' || true)" "0"
JARN="$WORK/jar-new"
curl -s -c "$JARN" -d 'username=bob&password=bob-password' "$BASE/login" >/dev/null
VALUE="$(awk '$6=="connect.sid" {print $7}' "$JARN")"
SIGNER="$(python3 - "$VALUE" <<'EOF'
import sys, urllib.parse, hmac, hashlib, base64
v = urllib.parse.unquote(sys.argv[1])[2:]
sid, sig = v[:v.rindex(".")], v[v.rindex(".") + 1:]
for s in ["new-secret", "old-secret"]:
    mac = base64.b64encode(hmac.new(s.encode(), sid.encode(), hashlib.sha256).digest()).decode().rstrip("=")
    if mac == sig:
        print(s)
EOF
)"
check "new cookies signed by the first secret" "$SIGNER" "new-secret"
stop_app
start_app SESSION_SECRETS=new-secret
check "old-secret cookie refused once removed" "$(curl -s -o /dev/null -w '%{http_code}' -b "$JAR" "$BASE/me")" "401"
stop_app

echo "# lifecycle"
start_app
P="$APP_PID"
exec 9>&- # close the app's stdin
for _ in $(seq 40); do kill -0 "$P" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$P" 2>/dev/null; then bad "exits when stdin closes"; kill "$P"; else ok "exits when stdin closes"; fi
wait "$P" && ok "exit status 0 on stdin close" || bad "exit status on stdin close"
APP_PID=""
start_app
kill -TERM "$APP_PID"
wait "$APP_PID" && ok "SIGTERM exit status 0" || bad "SIGTERM exit status"
APP_PID=""
exec 9>&-
check "REDIS_URL required" "$(env -u REDIS_URL node "$HERE/app.js" </dev/null >/dev/null 2>&1; echo $?)" "2"

kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=""
if [ "$FAILS" -eq 0 ]; then echo "all checks passed"; else echo "$FAILS check(s) failed"; exit 1; fi
