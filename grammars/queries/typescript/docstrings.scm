; JSDoc comments (/** ... */).
((comment) @docstring
  (#match? @docstring "^/\\*\\*"))
