#!/bin/sh
# What the upstream image's entrypoint does for a non-root container: arguments that start
# with a dash (or name a .conf file) are redis-server's, and files it makes are private.
set -e
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi
# The upstream image compiles protected mode off (its Dockerfile patches config.c): Redis's
# own build has it on, so it is turned off here first, where later arguments can still turn it on.
if [ "$1" = redis-server ]; then
	shift
	# A config file must stay redis-server's first argument.
	if [ "${1%.conf}" != "$1" ]; then
		conf="$1"
		shift
		set -- redis-server "$conf" --protected-mode no "$@"
	else
		set -- redis-server --protected-mode no "$@"
	fi
fi
if [ "$(umask)" = '0022' ]; then
	umask 0077
fi
exec "$@"
