"""What keeps a container in beyond its namespaces: Docker's default profile as labkit
data (seccomp rules, the device allow-list) and the options that loosen it."""
