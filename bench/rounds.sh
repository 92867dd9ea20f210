# rounds.sh: sourced by bench/run_clip.sh and bench/run_stylegan2.sh. best_of_rounds DIR PASS...
# prints, per pass, the best wall and CPU times over the rounds that DIR/pbw and DIR/torch
# collected (lines "<round> <pass> ... <ms> <GFLOP/s> <% of peak> <cpu ms>", as bench_clip,
# bench_stylegan2 and their PyTorch twins print them) and their ratios pbw / PyTorch.
best_of_rounds() {
    local dir=$1 pass p t pc tc gf
    shift
    for pass in "$@"; do
        p=$(awk -v p="$pass" '$2 == p {print $4}' "$dir/pbw" | sort -g | head -1)
        t=$(awk -v p="$pass" '$2 == p {print $4}' "$dir/torch" | sort -g | head -1)
        pc=$(awk -v p="$pass" '$2 == p {print $7}' "$dir/pbw" | sort -g | head -1)
        tc=$(awk -v p="$pass" '$2 == p {print $7}' "$dir/torch" | sort -g | head -1)
        gf=$(awk -v p="$pass" -v best="$p" '$2 == p && $4 == best {print $5 " GFLOP/s, " $6 "% of peak"; exit}' "$dir/pbw")
        printf '%-7s wall: pbw %8.1f torch %8.1f ratio %.2f | cpu: pbw %8.1f torch %8.1f ratio %.2f | pbw %s\n' \
            "$pass" "$p" "$t" "$(echo "$p $t" | awk '{print $1 / $2}')" \
            "$pc" "$tc" "$(echo "$pc $tc" | awk '{print $1 / $2}')" "$gf"
    done
}
