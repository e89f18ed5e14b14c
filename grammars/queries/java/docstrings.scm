; Javadoc comments (/** ... */).
((block_comment) @docstring
  (#match? @docstring "^/\\*\\*"))
