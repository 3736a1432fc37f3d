"""The certificate tree and everything lematt keeps on disk.

``layout`` (file names and modes), ``atomic`` (reads, atomic writes), ``safe`` and ``dirs``
(directories opened without following symlinks, explicit modes, ownership checks),
``journal`` (the checksummed record of a commit in progress), ``record`` (what a journal may
name, and rolling it forward), ``pairs`` (a pair's versions and its one-rename switch),
``tree`` (the ``Store``: lock, directories, commit protocol, recovery), ``committer`` (group
commits), ``inventory`` (what is stored, through the index), ``pending`` (deploys still owed).
"""
