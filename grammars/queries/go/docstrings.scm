; Doc comments: comments directly above a top-level declaration.
(source_file
  (comment) @docstring
  .
  [(function_declaration) (method_declaration) (type_declaration) (const_declaration) (var_declaration)])
