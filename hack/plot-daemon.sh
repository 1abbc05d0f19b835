#!/usr/bin/env bash
# Plots the daemon benchmark (hack/bench-daemon.sh) against the number of services, kproxy
# beside upstream kube-proxy on each backend: the full sync (with the bare restore of the
# ruleset kproxy left), peak RSS after the first sync, and the churn's p99 latency in the
# kernel. Usage: hack/plot-daemon.sh OUT.png REPORT.json...
# Takes the N x 5 shapes of every report.json given (a later report wins a cell two
# reports share), so sizes measured in separate runs can share one plot: say so where it
# is shown. A daemon that timed out is left out of the plot (its table says ">timeout").
# Needs jq and gnuplot (installed with apt when missing and root).
set -euo pipefail
usage="usage: hack/plot-daemon.sh OUT.png REPORT.json..."
out=${1:?$usage}
shift
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
for tool in jq:jq gnuplot:gnuplot-nox; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
    else
      echo "plot-daemon: ${tool%%:*} is missing (apt-get install ${tool#*:})" >&2
      exit 1
    fi
  fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One line per (services, proxy, backend): full sync, bare restore (medians), peak RSS in
# MiB, churn p99 in the kernel (nearest rank, as the report computes it); NaN when not
# measured.
jq -r '
  def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
  def p99: sort | if length == 0 then null else .[([((0.99 * length) | ceil), 1] | max) - 1] end;
  def num: if . == null then "NaN" else tostring end;
  .sizes[] | select(.shape.endpoints == 5) | .shape.services as $n | .runs[] |
  select(.start.timedOut != true and .fullSync.count > 0) |
  [$n, .proxy, .backend,
   (.fullSync.sum / .fullSync.count | num),
   ([.bare[]? | select(.err == null and .timedOut != true) | .seconds] | median | num),
   (if .afterSync.peakRSSKiB > 0 then .afterSync.peakRSSKiB / 1024 else null end | num),
   ([.churn.changes[]? | select(.seconds >= 0 and .superseded != true) | .seconds] | p99 | num)]
  | @tsv' "$@" > "$tmp/all.tsv"
# A later report wins: keep the last line of each (services, proxy, backend).
tac "$tmp/all.tsv" | awk -F'\t' '!seen[$1 FS $2 FS $3]++' | sort -n > "$tmp/cells.tsv"
for proxy in kproxy upstream; do
  for backend in legacy nft; do
    awk -F'\t' -v p="$proxy" -v b="$backend" '$2 == p && $3 == b { print $1, $4, $5, $6, $7 }' "$tmp/cells.tsv" > "$tmp/$proxy-$backend.dat"
  done
done
if [ ! -s "$tmp/kproxy-legacy.dat" ] && [ ! -s "$tmp/kproxy-nft.dat" ]; then
  echo "plot-daemon: no N x 5 run of kproxy in $*" >&2
  exit 1
fi

# gnuplot refuses to plot an empty file: give each series a line it cannot draw.
for f in "$tmp"/*.dat; do
  [ -s "$f" ] || echo "NaN NaN NaN NaN NaN" > "$f"
done
series() { # column, title suffix
  local col=$1
  echo "\"$tmp/kproxy-legacy.dat\" using 1:$col with linespoints lw 2 pt 7 lc rgb '#1f77b4' title 'kproxy legacy', \\"
  echo "\"$tmp/upstream-legacy.dat\" using 1:$col with linespoints lw 2 dt 2 pt 6 lc rgb '#1f77b4' title 'upstream legacy', \\"
  echo "\"$tmp/kproxy-nft.dat\" using 1:$col with linespoints lw 2 pt 5 lc rgb '#d62728' title 'kproxy nft', \\"
  echo "\"$tmp/upstream-nft.dat\" using 1:$col with linespoints lw 2 dt 2 pt 4 lc rgb '#d62728' title 'upstream nft'"
}
gnuplot <<GP
set terminal pngcairo size 1500,480 font "sans,10"
set output "$out"
set multiplot layout 1,3 title "The daemons on one node, N services x 5 endpoints (lower is better; a daemon that timed out has no point)"
set xlabel "services"
set logscale x
set logscale y
set grid
set key top left
set title "first full sync (s); grey: bare restore of kproxy's ruleset"
plot $(series 2), \
     "$tmp/kproxy-legacy.dat" using 1:3 with linespoints lw 1 dt 3 pt 1 lc rgb '#777777' title 'bare legacy', \
     "$tmp/kproxy-nft.dat" using 1:3 with linespoints lw 1 dt 3 pt 2 lc rgb '#aaaaaa' title 'bare nft'
set title "peak RSS after the first sync (MiB)"
plot $(series 4)
set title "churn, 20 endpoint changes/s: p99 latency in the kernel (s)"
plot $(series 5)
unset multiplot
GP
echo "plot-daemon: wrote $out"
