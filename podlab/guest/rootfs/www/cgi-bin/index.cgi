#!/bin/sh
# busybox httpd runs /cgi-bin/index.cgi for a directory URL without index.html (e.g. /cfg/...): list it.
p=$(httpd -d "${REQUEST_URI%%\?*}")
d=/www$p
printf 'Content-Type: text/html\r\n\r\n'
echo "<html><head><title>Index of $p</title></head><body><h1>Index of $p</h1><ul>"
for f in "$d".* "$d"*; do
	n=${f##*/}
	case "$n" in .|..|'.*'|'*') continue ;; esac
	[ -d "$f" ] && n="$n/"
	echo "<li><a href=\"$n\">$n</a></li>"
done
echo "</ul></body></html>"
