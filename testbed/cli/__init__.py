"""The ``testbed`` command: commands parse their arguments, call the library and print. ``console``
is the light entry point; ``commands`` the click group."""
