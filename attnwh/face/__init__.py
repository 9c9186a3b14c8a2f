"""The face of attnwh: the command line (``cli``: thin commands over the stages), the notebook API
(``notebook``: ``attnwh.open``) and the work that spans stages (``workflows``). Nothing below imports it."""
