; Doxygen-style comments: /** ... */, /*! ... */, /// and //!.
((comment) @docstring
  (#match? @docstring "^(/\\*[*!]|//[/!])"))
