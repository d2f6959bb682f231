"""The kernel's interfaces k4sinit uses directly: mounts, modules and coldplug, sysctls, hostname."""
