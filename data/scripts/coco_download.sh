#!/usr/bin/env bash
# The one implementation behind data/scripts/COCO.sh and COCO_test.sh (sourced, not run):
# download COCO archives with resume, verify them, unpack them into ROOT.
#
# A script lists its archives in COCO_FILES, one per line:
#     <path under COCO_BASE_URL>  <bytes or ->  <md5 or ->  <folder the archive holds>
# and calls `coco_fetch_all ROOT`. For each archive:
#   1. download to ROOT/.coco/<name>.part, resuming what an earlier run left (curl -C - /
#      wget -c), retrying a dropped connection; the size must match (bytes, or else the server's
#      Content-Length);
#   2. check the md5; only then is the file renamed to ROOT/.coco/<name> ("verified");
#   3. unzip into ROOT/.coco/unpack-<name>/ and move its top folder to ROOT/<folder> with one
#      rename (into an existing ROOT/<folder>, such as annotations/, file by file);
#   4. write ROOT/.coco/<name>.done and delete the archive (COCO_KEEP_ZIPS=1 keeps it).
# A rerun skips every archive whose .done marker and folder exist, so it downloads nothing. A
# kill at any point leaves either a resumable .part, a verified archive, or a hidden temporary
# folder that the next run deletes: never a partly unpacked ROOT/<folder> marked complete.
#
# Environment:
#   COCO_BASE_URL    where the archives are (default http://images.cocodataset.org); a mirror or
#                    an offline copy (file:///mnt/coco) with the same paths
#   COCO_MANIFEST    a file in the COCO_FILES format that replaces the script's list (a mirror with
#                    other files or checksums)
#   COCO_DOWNLOADER  curl or wget (default: curl if installed)
#   COCO_RETRIES     download attempts per archive, each resuming the last (default 5)
#   COCO_KEEP_ZIPS   1: keep the archives after unpacking

COCO_BASE_URL=${COCO_BASE_URL:-http://images.cocodataset.org}
COCO_RETRIES=${COCO_RETRIES:-5}

coco_die() {
    echo "error: $*" >&2
    exit 1
}

coco_size() {  # bytes of a file, 0 when absent
    if [ -f "$1" ]; then wc -c < "$1" | tr -d ' '; else echo 0; fi
}

coco_check_tools() {
    if [ -z "${COCO_DOWNLOADER:-}" ]; then
        if command -v curl > /dev/null; then COCO_DOWNLOADER=curl
        elif command -v wget > /dev/null; then COCO_DOWNLOADER=wget
        else coco_die "downloading COCO needs curl or wget; install one of them"; fi
    fi
    case "$COCO_DOWNLOADER" in
        curl|wget) command -v "$COCO_DOWNLOADER" > /dev/null || coco_die "COCO_DOWNLOADER=$COCO_DOWNLOADER is not installed" ;;
        *) coco_die "COCO_DOWNLOADER must be curl or wget, got '$COCO_DOWNLOADER'" ;;
    esac
    command -v md5sum > /dev/null || coco_die "checking the archives needs md5sum (coreutils)"
    command -v unzip > /dev/null || command -v python3 > /dev/null \
        || coco_die "unpacking the archives needs unzip (or python3)"
}

coco_remote_size() {  # Content-Length of the final response to a HEAD request, empty if none
    local url=$1
    if [ "$COCO_DOWNLOADER" = curl ]; then
        curl -sSIL --connect-timeout 20 "$url" 2>/dev/null
    else
        wget -q -S --spider "$url" 2>&1
    fi | tr -d '\r' | awk 'tolower($1) == "content-length:" { n = $2 } END { if (n != "") print n }'
}

coco_download_once() {  # one attempt, continuing $2 from its current size
    local url=$1 part=$2
    if [ "$COCO_DOWNLOADER" = curl ]; then
        curl -fL --connect-timeout 20 --progress-bar -C - -o "$part" "$url"
    else
        wget -q --show-progress --connect-timeout=20 --tries=1 -c -O "$part" "$url"
    fi
}

# coco_download URL PART BYTES: make PART the complete file of BYTES bytes, resuming.
coco_download() {
    local url=$1 part=$2 bytes=$3 attempt=1 status have
    while :; do
        have=$(coco_size "$part")
        if [ "$have" -gt "$bytes" ]; then
            echo "$(basename "$part"): $have bytes, more than the expected $bytes; starting over"
            rm -f "$part"
            have=0
        fi
        [ "$have" -eq "$bytes" ] && return 0
        [ "$have" -gt 0 ] && echo "Resuming $(basename "${part%.part}") at byte $have of $bytes"
        status=0
        coco_download_once "$url" "$part" || status=$?
        if [ "$COCO_DOWNLOADER" = curl ] && [ "$status" -eq 33 ]; then
            # The server ignores byte ranges: the partial file cannot be continued.
            echo "The server cannot resume downloads; starting $(basename "${part%.part}") over"
            rm -f "$part"
        fi
        have=$(coco_size "$part")
        [ "$have" -eq "$bytes" ] && return 0
        if [ "$attempt" -ge "$COCO_RETRIES" ]; then
            coco_die "downloading $url failed after $attempt attempt(s) ($have of $bytes bytes" \
                "in $part; run the script again to resume)"
        fi
        attempt=$((attempt + 1))
        echo "Download interrupted at byte $have of $bytes; retrying (attempt $attempt of $COCO_RETRIES)"
        sleep 1
    done
}

coco_unzip() {  # coco_unzip ARCHIVE DEST
    if command -v unzip > /dev/null; then
        unzip -q "$1" -d "$2"
    else
        python3 -m zipfile -e "$1" "$2"
    fi
}

# coco_fetch ROOT PATH BYTES MD5 FOLDER: one archive, skipped if already in place.
coco_fetch() {
    local root=$1 path=$2 bytes=$3 md5=$4 folder=$5
    local name work url zip part done tmp actual
    name=$(basename "$path")
    work="$root/.coco"
    url="${COCO_BASE_URL%/}/$path"
    zip="$work/$name"
    part="$zip.part"
    done="$work/$name.done"
    tmp="$work/unpack-$name"

    if [ -f "$done" ] && [ -d "$root/$folder" ]; then
        echo "$folder/ from $name: already in place"
        return 0
    fi
    rm -f "$done"
    mkdir -p "$work"

    if [ ! -f "$zip" ]; then
        if [ "$bytes" = - ]; then
            bytes=$(coco_remote_size "$url" || true)
            [ -n "$bytes" ] || coco_die "cannot get the size of $url (is COCO_BASE_URL=$COCO_BASE_URL right?)"
        fi
        echo "Downloading $url ($bytes bytes)"
        coco_download "$url" "$part" "$bytes"
        if [ "$md5" != - ]; then
            actual=$(md5sum "$part" | cut -d' ' -f1)
            if [ "$actual" != "$md5" ]; then
                rm -f "$part"
                coco_die "$name is corrupt: md5 $actual, expected $md5 (deleted; run the script again to download it anew)"
            fi
        fi
        mv -f "$part" "$zip"
    fi

    echo "Unpacking $name into $root/$folder/"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! coco_unzip "$zip" "$tmp" > /dev/null 2>&1; then
        rm -rf "$tmp"
        rm -f "$zip"
        coco_die "$name is not a readable zip archive (deleted; run the script again to download it anew)"
    fi
    if [ ! -d "$tmp/$folder" ]; then
        rm -rf "$tmp"
        coco_die "$name does not hold a $folder/ folder; is COCO_BASE_URL=$COCO_BASE_URL a COCO mirror?"
    fi
    if [ -e "$root/$folder" ] && [ ! -d "$root/$folder" ]; then
        rm -rf "$tmp"
        coco_die "$root/$folder exists and is not a folder; move it away and run the script again"
    fi
    if [ -d "$root/$folder" ]; then
        # Shared with another archive (annotations/) or left by hand: add the files one by one.
        find "$tmp/$folder" -mindepth 1 -maxdepth 1 -exec mv -f -t "$root/$folder" {} +
    else
        mv "$tmp/$folder" "$root/$folder"
    fi
    rm -rf "$tmp"
    touch "$done"
    [ "${COCO_KEEP_ZIPS:-0}" = 1 ] || rm -f "$zip"
}

# coco_fetch_all ROOT: every archive of COCO_FILES (or of the COCO_MANIFEST file).
coco_fetch_all() {
    local root=$1 start list path bytes md5 folder
    start=$(date +%s)
    coco_check_tools
    mkdir -p "$root" || coco_die "cannot create the folder $root"
    list=$COCO_FILES
    if [ -n "${COCO_MANIFEST:-}" ]; then
        [ -f "$COCO_MANIFEST" ] || coco_die "COCO_MANIFEST file not found: $COCO_MANIFEST"
        list=$(cat "$COCO_MANIFEST")
    fi
    # The list is read on fd 3 so that nothing run for an archive can swallow the next lines.
    while read -r path bytes md5 folder <&3; do
        case "$path" in ''|'#'*) continue ;; esac
        [ -n "$folder" ] || coco_die "bad archive line '$path $bytes $md5' (want: path bytes md5 folder)"
        coco_fetch "$root" "$path" "$bytes" "$md5" "$folder"
    done 3<<< "$list"
    echo "Done in $(( $(date +%s) - start )) s: $root"
}
