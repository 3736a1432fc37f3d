"""What a run leaves behind for its operators, on every exit path: the JSON summary
(``summary``) and the notify hooks that receive it (``notify``)."""
