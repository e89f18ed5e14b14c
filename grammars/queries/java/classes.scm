(class_declaration
  name: (identifier) @class.name
  body: (class_body) @class.body) @class
(interface_declaration
  name: (identifier) @class.name
  body: (interface_body) @class.body) @class
(enum_declaration
  name: (identifier) @class.name
  body: (enum_body) @class.body) @class
(record_declaration
  name: (identifier) @class.name
  body: (class_body) @class.body) @class
(annotation_type_declaration
  name: (identifier) @class.name
  body: (annotation_type_body) @class.body) @class
