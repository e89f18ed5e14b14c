; Doc comments: /// and //! lines, /** */ and /*! */ blocks.
((line_comment) @docstring
  (#match? @docstring "^//[/!]"))
((block_comment) @docstring
  (#match? @docstring "^/\\*[*!]"))
