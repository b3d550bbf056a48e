#!/bin/sh
# Vendor Leaflet (the version pinned in package.json) into soar/web/static/vendor/leaflet/, so
# the map page is served from the package: no CDN and no npm at run time.
# Run after changing the pin; commit the result.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(node -p "require('$root/package.json').dependencies.leaflet")
dest="$root/soar/web/static/vendor/leaflet"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "leaflet@$version" >/dev/null)
tar -xzf "$work"/leaflet-*.tgz -C "$work"
rm -rf "$dest"
mkdir -p "$dest"
cp -R "$work/package/dist/." "$dest/"
cp "$work/package/LICENSE" "$dest/LICENSE"
# Source maps and the un-minified source are not served.
rm -f "$dest"/*.map "$dest/leaflet-src.js" "$dest/leaflet-src.esm.js"
echo "$version" > "$dest/VERSION"
echo "leaflet $version -> $dest"
