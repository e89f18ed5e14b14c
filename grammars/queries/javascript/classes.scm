(class_declaration
  name: (identifier) @class.name
  body: (class_body) @class.body) @class
(class
  body: (class_body) @class.body) @class
