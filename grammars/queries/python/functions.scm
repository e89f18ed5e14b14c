; Function and method definitions. @function is the whole definition (without decorators),
; @function.name its name, @function.body its indented block.
(function_definition
  name: (identifier) @function.name
  body: (block) @function.body) @function
