"""Running services: the reaper, processes, output, cgroups, probes, timeouts, one runner per service, the supervisor."""
