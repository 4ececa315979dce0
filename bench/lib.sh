# Shared by the wrk-based bench scripts (source it; needs THREADS, CONNECTIONS, DURATION, BASE).

# run_wrk PATH [SCRIPT ARG] → "rps p50 p99 non2xx"
run_wrk() {
  local path=$1 script=${2:-} arg=${3:-} out
  if [ -n "$script" ]; then
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$script" "$BASE$path" -- "$arg")
  else
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$BASE$path")
  fi
  local rps p50 p99 bad
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  echo "$rps $p50 $p99 ${bad:-0}"
}

# ratio A B → "A/B as a percentage"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "n/a" }'; }
