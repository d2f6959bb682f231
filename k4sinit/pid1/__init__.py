"""What only PID 1 does: boot stages, switch root, console and fallback, power, the container mode."""
