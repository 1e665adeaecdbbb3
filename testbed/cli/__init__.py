"""The ``testbed`` command: commands parse their arguments, call the library and print. ``console``
is the light entry point; ``commands`` the click group; ``plugin_commands`` the subcommands plugins
add; ``params`` the option values checked against what plugins registered; ``progress`` the live
progress display."""
