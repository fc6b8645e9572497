"""IMRS: self-hosted image retrieval with on-demand web expansion."""

from ._pycompat import install_ast_parse_guard

install_ast_parse_guard()
