"""Pure types and decisions: specs, config types, state, graph, restart policy, kernel command line, image info, logging. No trio."""
