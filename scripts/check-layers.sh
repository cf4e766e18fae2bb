#!/bin/sh
# Checks that every layer of plaza includes only its own headers and those
# of the layers before it (docs/design.md, Layers):
#   arch runtime park sync async io advisor pg
# A quoted include in src/<layer>/ (or in the public header of a layer,
# include/plaza/<name>.h) names a layer by its directory (../<layer>/...),
# by a public header (plaza/<name>.h, or <name>.h inside include/plaza), or
# is a file of its own directory.  Prints every offending include and exits
# 1 if there is one; 0 otherwise.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
order="arch runtime park sync async io advisor pg"

rank() { # rank of a layer name, or nothing if it is not one
    i=0
    for l in $order apps; do
        if [ "$l" = "$1" ]; then echo $i; return; fi
        i=$((i + 1))
    done
}

# The layer of a public header (include/plaza/<name>.h).
header_layer() {
    case "$1" in
    runtime | task) echo runtime ;;
    park) echo park ;;
    sync) echo sync ;;
    async | guard) echo async ;;
    io | bufio | signal | select) echo io ;;
    advisor) echo advisor ;;
    pg) echo pg ;;
    *) echo apps ;; # plaza.h and anything new: the top
    esac
}

bad=0
check_file() { # file, its layer
    file=$1 layer=$2
    own=$(rank "$layer")
    # Quoted includes only: system headers are not ours.
    grep -n '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$file" | while IFS= read -r line; do
        num=${line%%:*}
        inc=$(printf '%s\n' "$line" | sed 's/.*include[[:space:]]*"\([^"]*\)".*/\1/')
        case "$inc" in
        ../*/*) target=$(printf '%s\n' "$inc" | cut -d/ -f2) ;;
        plaza/*.h) target=$(header_layer "$(basename "$inc" .h)") ;;
        plaza.h) target=io ;; # it includes the headers up to io (include/plaza.h)
        */*) target=apps ;;
        *)
            if [ "${file#"$root"/include/plaza/}" != "$file" ]; then
                target=$(header_layer "$(basename "$inc" .h)")
            else
                target=$layer
            fi
            ;;
        esac
        r=$(rank "$target")
        if [ -z "$r" ] || [ "$r" -gt "$own" ]; then
            echo "${file#"$root"/}:$num: layer $layer includes \"$inc\" of layer $target" >&2
            echo x
        fi
    done
}

out=$(
    for layer in $order; do
        [ -d "$root/src/$layer" ] || continue
        find "$root/src/$layer" -type f \( -name '*.c' -o -name '*.h' -o -name '*.S' \) | sort | while read -r f; do
            check_file "$f" "$layer"
        done
    done
    for f in "$root"/include/plaza/*.h; do
        check_file "$f" "$(header_layer "$(basename "$f" .h)")"
    done
)
if [ -n "$out" ]; then
    echo "check-layers: a layer includes a header of a layer after it (order: $order)" >&2
    exit 1
fi
echo "check-layers: every include follows the order $order"
