"""What runs in the container's first process, between fork and exec (and in an exec's
last fork): the recipe.

    recipe.py    become_container / set_up_container: the steps in order
    mounts.py    the root filesystem: overlay, /proc /dev /sys, volumes, masks, pivot_root
    command.py   stdio, user, capabilities, seccomp, exec (or the --init reaper)
    slot.py      a ready slot's first process: joins its cgroup early, waits for a plan

Nothing here imports another process's package: what it needs comes in the plan.
"""
