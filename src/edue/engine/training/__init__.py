"""Training: the seeded, resumable, distributed :class:`Trainer`, its validation
figures and callbacks, ensembles trained member by member, and the jobs that train the
compared methods."""
