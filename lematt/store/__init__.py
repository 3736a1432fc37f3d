"""The certificate tree and everything lematt keeps on disk.

``layout`` (file names and modes), ``atomic`` (reads, atomic writes), ``journal`` (the
checksummed record of a commit in progress), ``tree`` (the ``Store``: lock, directories,
commit protocol, recovery), ``committer`` (group commits), ``inventory`` (what is stored,
through the index), ``pending`` (deploys still owed).
"""
