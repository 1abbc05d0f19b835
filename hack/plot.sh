#!/usr/bin/env bash
# Plots full-sync time against the number of services, per backend, kproxy against the bare
# iptables-restore of the same payload. Usage: hack/plot.sh RESULTS.tsv OUT.png
# RESULTS.tsv has a header line and the columns: services backend kproxy_seconds bare_seconds
# (hack/bench.sh -tsv writes it). Needs gnuplot (installed with apt when missing and root).
set -euo pipefail
in=${1:?usage: hack/plot.sh RESULTS.tsv OUT.png}
out=${2:?usage: hack/plot.sh RESULTS.tsv OUT.png}
if ! command -v gnuplot >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null
  else
    echo "plot: gnuplot is missing (apt-get install gnuplot-nox)" >&2
    exit 1
  fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for backend in legacy nft; do
  awk -v b="$backend" 'NR > 1 && $2 == b && $3 != "" && $3 != "-" { print $1, $3, ($4 == "-" ? "NaN" : $4) }' "$in" | sort -n > "$tmp/$backend.dat"
done
gnuplot <<GP
set terminal pngcairo size 900,560 font "sans,11"
set output "$out"
set title "Full sync of N services x 5 endpoints (lower is better)"
set xlabel "services"
set ylabel "seconds"
set logscale y
set key top left
set grid
plot "$tmp/legacy.dat" using 1:2 with linespoints lw 2 pt 7 title "kproxy, legacy backend", \
     "$tmp/legacy.dat" using 1:3 with linespoints lw 1 dt 2 pt 6 title "bare iptables-restore of the same payload, legacy", \
     "$tmp/nft.dat" using 1:2 with linespoints lw 2 pt 5 title "kproxy, nft backend", \
     "$tmp/nft.dat" using 1:3 with linespoints lw 1 dt 2 pt 4 title "bare iptables-restore of the same payload, nft"
GP
echo "plot: wrote $out"
